//! The policy-routing pair that makes `bpf_sk_assign` deliver locally
//! (docs/datapath.md §A, pitfall 1): `ip rule fwmark 0x200/0xf00 lookup <table>`
//! and `local 0.0.0.0/0 dev lo table <table>`. Implemented with the `ip`
//! command (iproute2) in the calling thread's network namespace.

use std::process::Command;

use crate::{common, Error, Result};

/// The fwmark rule + local route for proxy redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyRouting {
    /// Routing table holding the `local 0.0.0.0/0 dev lo` route.
    pub table: u32,
    /// `ip rule` preference (lower = earlier; must precede the main table's 32766).
    pub priority: u32,
}

impl Default for ProxyRouting {
    /// Cilium's numbers: table 2004, preference 9.
    fn default() -> Self {
        Self {
            table: 2004,
            priority: 9,
        }
    }
}

fn ip(args: &[String]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| Error::Io {
            what: "running `ip` (iproute2)".into(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl ProxyRouting {
    fn mark(&self) -> String {
        format!(
            "{:#x}/{:#x}",
            common::MARK_PROXY_REDIRECT,
            common::MARK_MASK
        )
    }

    fn rule_args(&self, verb: &str) -> Vec<String> {
        vec![
            "-4".into(),
            "rule".into(),
            verb.into(),
            "fwmark".into(),
            self.mark(),
            "lookup".into(),
            self.table.to_string(),
            "pref".into(),
            self.priority.to_string(),
        ]
    }

    /// Whether the rule is present.
    pub fn is_installed(&self) -> Result<bool> {
        let out = ip(&[
            "-4".into(),
            "rule".into(),
            "show".into(),
            "pref".into(),
            self.priority.to_string(),
        ])?;
        let table = self.table.to_string();
        Ok(out.lines().any(|l| {
            l.contains(&format!("fwmark {}", self.mark()))
                && (l.contains(&format!("lookup {table}")) || l.contains(&format!("table {table}")))
        }))
    }

    /// Installs rule and route; idempotent.
    pub fn install(&self) -> Result<()> {
        ip(&[
            "-4".into(),
            "route".into(),
            "replace".into(),
            "local".into(),
            "0.0.0.0/0".into(),
            "dev".into(),
            "lo".into(),
            "table".into(),
            self.table.to_string(),
        ])?;
        if !self.is_installed()? {
            ip(&self.rule_args("add"))?;
        }
        Ok(())
    }

    /// Removes rule and route; idempotent.
    pub fn remove(&self) -> Result<()> {
        while self.is_installed()? {
            ip(&self.rule_args("del"))?;
        }
        let _ = ip(&[
            "-4".into(),
            "route".into(),
            "flush".into(),
            "table".into(),
            self.table.to_string(),
        ]);
        Ok(())
    }
}
