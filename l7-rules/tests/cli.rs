//! `ward-check` as users run it: exit codes, text and JSON output, case files.

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ward-check"))
}

fn scene(name: &str) -> String {
    format!("{}/../config/policies/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("ward-check runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TIE: &str = "org=empire,class=tiefighter";
const DS: &str = "k8s:org=empire,k8s:class=deathstar,namespace=default";

#[test]
fn exit_codes_and_text() {
    let l7 = scene("starwars-l7");
    let (code, out, _) = run(&[
        "--policy",
        &l7,
        "--from",
        TIE,
        "--to",
        DS,
        "--port",
        "80",
        "http",
        "POST",
        "/v1/request-landing",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, "ALLOWED (L7): default/rule1 ingress[0].toPorts[0].rules.http[0] allows POST /v1/request-landing\n");
    let (code, out, _) = run(&[
        "--policy",
        &l7,
        "--from",
        TIE,
        "--to",
        DS,
        "--port",
        "80",
        "--protocol",
        "TCP",
        "http",
        "PUT",
        "/v1/exhaust-port",
    ]);
    assert_eq!(code, 1);
    assert_eq!(out, "DENIED (L7): default/rule1 ingress[0].toPorts[0] allows POST /v1/request-landing; PUT /v1/exhaust-port matched no http rule\n");
    let (code, out, _) = run(&[
        "--policy",
        &l7,
        "--from",
        "org=alliance,class=xwing",
        "--to",
        DS,
        "--port",
        "80",
    ]);
    assert_eq!(code, 1);
    assert!(out.starts_with("DENIED (L3/L4): "), "{out}");
    // Usage errors exit 2.
    assert_eq!(run(&["--policy", &l7, "--from", TIE]).0, 2);
    assert_eq!(
        run(&["--policy", &l7, "--from", "nonsense", "--to", DS, "--port", "80"]).0,
        2
    );
    assert_eq!(run(&[]).0, 2);
}

#[test]
fn json_output_has_the_documented_keys() {
    let (code, out, _) = run(&[
        "--policy",
        &scene("starwars-l7"),
        "-o",
        "json",
        "--from",
        TIE,
        "--to",
        DS,
        "http",
        "PUT",
        "/v1/exhaust-port",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["stage"], "l7");
    assert_eq!(v["l3l4"], "redirect");
    assert_eq!(v["l7"], "deny");
    assert_eq!(v["audit"], false);
    assert_eq!(v["policy"], "default/rule1");
    assert_eq!(v["rule"], "ingress[0].toPorts[0]");
    assert!(v["reason"]
        .as_str()
        .unwrap()
        .contains("matched no http rule"));
}

#[test]
fn audit_mode_allows_and_reports() {
    let (code, out, _) = run(&[
        "--policy",
        &scene("starwars-l7"),
        "--audit",
        "-o",
        "json",
        "--from",
        TIE,
        "--to",
        DS,
        "http",
        "PUT",
        "/v1/exhaust-port",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["verdict"].as_str(),
            v["audit"].as_bool(),
            v["l7"].as_str()
        ),
        (Some("allow"), Some(true), Some("deny"))
    );
}

#[test]
fn case_files_from_stdin_with_summary() {
    let cases = concat!(
        r#"{"name": "lands", "from": {"labels": {"org": "empire", "class": "tiefighter"}}, "to": {"labels": {"org": "empire", "class": "deathstar"}}, "direction": "ingress", "port": 80, "protocol": "TCP", "http": {"method": "POST", "path": "/v1/request-landing"}, "expect": "allow"}"#,
        "\n",
        r#"{"name": "wrong expectation", "from": {"labels": {"org": "empire", "class": "tiefighter"}}, "to": {"labels": {"org": "empire", "class": "deathstar"}}, "port": 80, "http": {"method": "PUT", "path": "/v1/exhaust-port"}, "expect": "allow"}"#,
        "\n",
        r#"{"name": "world", "from": "world", "to": {"labels": {"org": "empire", "class": "deathstar"}}, "port": 80, "expect": "deny"}"#,
        "\n",
    );
    let mut child = bin()
        .args(["--policy", &scene("starwars-l7"), "--cases", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "one case fails");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        (
            second["name"].as_str(),
            second["verdict"].as_str(),
            second["pass"].as_bool()
        ),
        (Some("wrong expectation"), Some("deny"), Some(false))
    );
    assert_eq!(lines[3], "2 passed, 1 failed");
}

#[test]
fn malformed_case_lines_and_policies_exit_2_with_location() {
    let mut child = bin()
        .args(["--policy", &scene("starwars-l7"), "--cases", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"from\": \"world\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"line\":1"));

    let dir = std::env::temp_dir().join(format!("ward-check-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [wrld]\n",
    )
    .unwrap();
    let (code, _, err) = run(&["--policy", dir.to_str().unwrap(), "--validate"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("bad.yaml:7: document 0 (CiliumNetworkPolicy p): spec.ingress[0].fromEntities[0]: unknown entity \"wrld\""), "{err}");
}
