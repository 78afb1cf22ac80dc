//! Who may read the endpoints. Their answers show the target's call stacks, command line
//! and peers, so off loopback serve answers only requests that carry the bearer token of
//! `--token-file` (`Authorization: Bearer TOKEN`, what Prometheus's `authorization` and
//! Pyroscope's and Parca's scrape configs send), unless `--insecure` says otherwise.
//! `/healthz` stays open for liveness probes.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context as _, bail};
use hyper::header::HeaderValue;

/// The path every client may read without the token.
pub const OPEN_PATH: &str = "/healthz";

/// The token requests must carry, if any.
#[derive(Debug)]
pub struct Access {
    token: Option<Vec<u8>>,
}

impl Access {
    /// The access `listen` needs: a token from `token_file`, or none on loopback (or
    /// off it with `insecure`). Off loopback without either, serve refuses to start.
    pub fn for_listen(
        listen: SocketAddr,
        token_file: Option<&Path>,
        tls: bool,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let token = token_file.map(read_token).transpose()?;
        if token.is_none() && !tls && !insecure && !listen.ip().is_loopback() {
            bail!(
                "{listen} is not a loopback address: give --token-file (a bearer token every \
                 request must carry), TLS (--tls-cert and --tls-key, with --tls-client-ca to \
                 ask for client certificates), or --insecure to let anyone who reaches it \
                 read the target's call stacks"
            );
        }
        Ok(Self { token })
    }

    /// Whether a request for `path` with this `Authorization` header may be answered.
    pub fn allows(&self, path: &str, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = &self.token else { return true };
        if path == OPEN_PATH {
            return true;
        }
        let Some(offered) = authorization.and_then(|value| bearer_token(value.as_bytes())) else {
            return false;
        };
        constant_time_eq(offered, token)
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = header.get(..SCHEME.len())?;
    scheme.eq_ignore_ascii_case(SCHEME).then(|| header[SCHEME.len()..].trim_ascii())
}

/// Compares without an early exit, so the time taken does not tell how much of a guess
/// was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The token in `path`: its content without surrounding whitespace (a trailing newline),
/// visible ASCII only (RFC 6750's token characters and more), not empty.
fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    if !token.iter().all(|byte| byte.is_ascii_graphic()) {
        bail!(
            "the token file {} holds more than one word of visible ASCII characters",
            path.display()
        );
    }
    Ok(token.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> Access {
        Access { token: Some(token.as_bytes().to_vec()) }
    }

    #[test]
    fn only_the_token_opens_every_path_but_healthz() {
        let access = with_token("s3cret-Token");
        let header = |value: &str| HeaderValue::from_str(value).unwrap();
        assert!(access.allows("/metrics", Some(&header("Bearer s3cret-Token"))));
        assert!(access.allows("/metrics", Some(&header("bearer s3cret-Token "))));
        assert!(!access.allows("/metrics", None));
        assert!(!access.allows("/metrics", Some(&header("Bearer s3cret-token"))));
        assert!(!access.allows("/", Some(&header("Bearer s3cret-Token2"))));
        assert!(!access.allows("/debug/pprof/block", Some(&header("Basic s3cret-Token"))));
        assert!(!access.allows("/metrics", Some(&header("Bearer"))));
        assert!(access.allows("/healthz", None));
        assert!(Access { token: None }.allows("/metrics", None));
    }

    #[test]
    fn off_loopback_a_token_tls_or_insecure_is_needed() {
        let any: SocketAddr = "0.0.0.0:6060".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:6060".parse().unwrap();
        let refused = Access::for_listen(any, None, false, false).unwrap_err().to_string();
        assert!(refused.starts_with("0.0.0.0:6060 is not a loopback address: give --token-file"));
        assert!(refused.contains("--tls-cert"), "{refused}");
        assert!(!Access::for_listen(any, None, false, true).unwrap().has_token());
        assert!(!Access::for_listen(any, None, true, false).unwrap().has_token());
        assert!(!Access::for_listen(loopback, None, false, false).unwrap().has_token());
    }

    #[test]
    fn token_files_are_one_visible_word() {
        let dir = std::env::temp_dir().join(format!("tracer-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc.DEF-123\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), b"abc.DEF-123");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_token(&file).unwrap_err().to_string().ends_with("is empty"));
        std::fs::write(&file, "two words").unwrap();
        assert!(read_token(&file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
