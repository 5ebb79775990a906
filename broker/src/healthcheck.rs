//! `tributary healthcheck`: asks a running Tributary's `/readyz` whether it is
//! ready, for container health checks and service managers that have no HTTP
//! client of their own.
//!
//! One HTTP/1.1 GET over a plain TCP connection, bounded by timeouts: it must
//! never hang a health check, and it reads nothing but the status line and the
//! first line of the body (the reason `/readyz` gives).

use std::fmt;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// How long connecting, and then reading the answer, may each take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The path asked for when a URL names none.
const READINESS_PATH: &str = "/readyz";

/// More than `/readyz` ever answers; anything past it is not read.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024;

/// The longest reason repeated from the answer's body.
const MAX_REASON_CHARS: usize = 200;

/// Where to ask: `host:port` and a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    authority: String,
    path: String,
}

impl Target {
    /// `http://host:port/path`, `http://host:port` or `host:port` (the path
    /// is then `/readyz`). Only plain `http`: the endpoint serves no TLS.
    pub fn parse(url: &str) -> Result<Target, Failure> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(Failure::BadUrl(format!(
                    "'{url}': scheme {scheme} is not supported, only http"
                )))
            }
            None => url,
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, READINESS_PATH),
        };
        if authority.is_empty()
            || authority.contains(['@', ' '])
            || path.contains([' ', '\r', '\n'])
        {
            return Err(Failure::BadUrl(format!(
                "'{url}' is not a URL like http://127.0.0.1:9464/readyz"
            )));
        }
        Ok(Target {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// `/readyz` on the HTTP listener bound to `listen`: an unspecified
    /// address (`0.0.0.0`, `[::]`) is asked on loopback of the same family.
    pub fn readiness_of(listen: SocketAddr) -> Target {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Target {
            authority: addr.to_string(),
            path: READINESS_PATH.to_owned(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Why the check failed, in one line.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    BadUrl(String),
    #[error("{target}: cannot resolve {authority}: {error}")]
    Resolve {
        target: Target,
        authority: String,
        error: std::io::Error,
    },
    #[error("{target}: cannot connect: {error}")]
    Connect {
        target: Target,
        error: std::io::Error,
    },
    #[error("{target}: no answer: {error}")]
    Exchange {
        target: Target,
        error: std::io::Error,
    },
    #[error("{target}: not an HTTP answer")]
    NotHttp { target: Target },
    #[error("{target}: {status}{}", reason_suffix(.reason))]
    NotReady {
        target: Target,
        status: u16,
        reason: String,
    },
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    }
}

/// Asks `target` once. `Ok` carries the first line of a 200 answer's body
/// (`ready`, or `ready: …, spooling …`).
pub fn check(target: &Target, timeout: Duration) -> Result<String, Failure> {
    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .map_err(|error| Failure::Resolve {
            target: target.clone(),
            authority: target.authority.clone(),
            error,
        })?
        .collect();
    let mut last_error = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last_error = error,
        }
    }
    let Some(stream) = stream else {
        return Err(Failure::Connect {
            target: target.clone(),
            error: last_error,
        });
    };
    let answer = exchange(stream, target, timeout).map_err(|error| Failure::Exchange {
        target: target.clone(),
        error,
    })?;
    let (status, reason) = parse_answer(&answer).ok_or_else(|| Failure::NotHttp {
        target: target.clone(),
    })?;
    if status == 200 {
        Ok(reason)
    } else {
        Err(Failure::NotReady {
            target: target.clone(),
            status,
            reason,
        })
    }
}

/// Sends the request and reads the answer until the server closes (the
/// request says `Connection: close`), the size bound, or the timeout.
fn exchange(mut stream: TcpStream, target: &Target, timeout: Duration) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tributary-healthcheck\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    let read = stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut answer);
    match read {
        Ok(_) => Ok(answer),
        // A status line already in hand is enough, whatever came after.
        Err(_) if answer.windows(4).any(|w| w == b"\r\n\r\n") => Ok(answer),
        Err(error) => Err(error),
    }
}

/// The status code, and the first line of the body (bounded, control
/// characters dropped), or `None` when it is not an HTTP/1.x answer.
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse::<u16>().ok()?;
    let reason: String = body
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    Some((status, reason.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_scheme_and_path() {
        let target = Target::parse("http://127.0.0.1:9464/readyz").unwrap();
        assert_eq!(target.to_string(), "http://127.0.0.1:9464/readyz");
        let target = Target::parse("localhost:9464").unwrap();
        assert_eq!(target.to_string(), "http://localhost:9464/readyz");
        let target = Target::parse("http://[::1]:9464/healthz").unwrap();
        assert_eq!(target.to_string(), "http://[::1]:9464/healthz");
    }

    #[test]
    fn urls_it_cannot_ask_are_refused() {
        for url in [
            "https://host:9464/readyz",
            "http:///readyz",
            "",
            "http://a b/",
        ] {
            assert!(Target::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        let v4 = Target::readiness_of("0.0.0.0:9464".parse().unwrap());
        assert_eq!(v4.to_string(), "http://127.0.0.1:9464/readyz");
        let v6 = Target::readiness_of("[::]:9464".parse().unwrap());
        assert_eq!(v6.to_string(), "http://[::1]:9464/readyz");
        let given = Target::readiness_of("10.0.0.7:9000".parse().unwrap());
        assert_eq!(given.to_string(), "http://10.0.0.7:9000/readyz");
    }

    #[test]
    fn answers_are_read_for_their_status_and_first_body_line() {
        let ready = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n";
        assert_eq!(parse_answer(ready), Some((200, "ready".to_owned())));
        let not_ready =
            b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready: Kafka\x1b[31m down\nmore\n";
        assert_eq!(
            parse_answer(not_ready),
            Some((503, "not ready: Kafka[31m down".to_owned()))
        );
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_answer(b""), None);
        assert_eq!(parse_answer(b"HTTP/1.1 abc\r\n\r\n"), None);
    }
}
