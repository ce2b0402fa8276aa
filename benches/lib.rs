//! Shared builders for Ward's criterion benches (the benches themselves are in `benches/`).

use std::fmt::Write;

/// A CiliumNetworkPolicy selecting `app=svc` with `n` HTTP rules on port 80. With `regex`,
/// every path is a regex (`/api/v1/resource-N/[0-9]+`), otherwise a literal.
pub fn http_policy(n: usize, regex: bool) -> String {
    let mut y = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bench}\nspec:\n  endpointSelector: {matchLabels: {app: svc}}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules:\n        http:\n",
    );
    for i in 0..n {
        let path = if regex {
            format!("/api/v1/resource-{i}/[0-9]+")
        } else {
            format!("/api/v1/resource-{i}")
        };
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let _ = writeln!(y, "        - {{method: {method}, path: \"{path}\"}}");
    }
    y
}

/// `n` policies, each with one ingress rule from a distinct label selector to a port, all
/// selecting `app=svc`: resolution work grows with rules × identities.
pub fn many_rules(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        let _ = write!(
            y,
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: r{i}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: svc}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{team: t{}}}}}]\n    toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
            i % 100,
            1000 + i
        );
    }
    y
}
