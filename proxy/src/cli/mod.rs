//! The `ward` command line's client side: asking a running node over the admin socket,
//! rendering its typed answers ([`render`]), and reading the flow log ([`observe`]).

pub mod observe;
pub mod render;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::admin::api::{Reply, Request};

/// Asking the node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach `ward run` at {}: {source} (is it running? pass --admin-socket or --config)", socket.display())]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to `ward run`: {0}")]
    Io(#[from] std::io::Error),
    #[error("`ward run` answered something else than expected: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

/// One request, one typed answer.
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, CallError> {
    let mut s = UnixStream::connect(socket).map_err(|source| CallError::Unreachable {
        socket: socket.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    r.read_line(&mut resp)?;
    let reply: Reply = serde_json::from_str(&resp)?;
    match (reply.ok, reply.data, reply.error) {
        (true, Some(data), _) => Ok(serde_json::from_value(data)?),
        (true, None, _) => Ok(serde_json::from_value(serde_json::Value::Null)?),
        (false, _, e) => Err(CallError::Refused(
            e.unwrap_or_else(|| "unknown error".into()),
        )),
    }
}
