//! Opening a replication connection: the hosts of a [`ConnSpec`] in order, the startup message
//! with `replication=true`, and authentication (trust, cleartext, MD5, SCRAM-SHA-256 without
//! channel binding, since we never use TLS).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use bytes::Buf;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;

use super::error::{ReplicationError, Result};
use super::wire::{Transport, Wire, cstr};
use crate::session::ConnSpec;

/// Where one attempt goes.
enum Endpoint {
    Unix(PathBuf),
    Tcp(String, u16),
    Addr(IpAddr, u16),
}

/// The places to try, in order, like libpq: one per host (or `hostaddr`), each with its port.
fn endpoints(spec: &ConnSpec) -> Result<Vec<Endpoint>> {
    let config = spec.config();
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    let count = hosts.len().max(addrs.len());
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let port = match ports {
            [one] => *one,
            many => many
                .get(i)
                .copied()
                .ok_or_else(|| ReplicationError::Config {
                    target: spec.target(),
                    detail: format!("no port for host number {}", i + 1),
                })?,
        };
        out.push(match (addrs.get(i), hosts.get(i)) {
            (Some(addr), _) => Endpoint::Addr(*addr, port),
            (None, Some(Host::Unix(dir))) => Endpoint::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            (None, Some(Host::Tcp(name))) => Endpoint::Tcp(name.clone(), port),
            (None, None) => unreachable_endpoint(spec)?,
        });
    }
    if out.is_empty() {
        unreachable_endpoint(spec)?;
    }
    Ok(out)
}

fn unreachable_endpoint(spec: &ConnSpec) -> Result<Endpoint> {
    Err(ReplicationError::Config {
        target: spec.target(),
        detail: "no host to connect to: give host= (or PGHOST)".into(),
    })
}

async fn open(endpoint: &Endpoint) -> io::Result<Box<dyn Transport>> {
    Ok(match endpoint {
        Endpoint::Unix(path) => Box::new(
            UnixStream::connect(path)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("socket {}: {e}", path.display())))?,
        ),
        Endpoint::Tcp(name, port) => {
            let stream = TcpStream::connect((name.as_str(), *port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{name}:{port}: {e}")))?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Endpoint::Addr(addr, port) => {
            let stream = TcpStream::connect((*addr, *port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{addr}:{port}: {e}")))?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    })
}

/// Tries each host in order; the first that accepts us wins. The error is the last host's.
pub(super) async fn connect_any(spec: &ConnSpec, application_name: &str) -> Result<Wire> {
    let mut last = None;
    for endpoint in endpoints(spec)? {
        let stream = match open(&endpoint).await {
            Ok(stream) => stream,
            Err(source) => {
                last = Some(ReplicationError::Connect {
                    target: spec.target(),
                    source,
                });
                continue;
            }
        };
        let mut wire = Wire::new(stream, spec.target());
        match startup(&mut wire, spec, application_name).await {
            Ok(()) => return Ok(wire),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ReplicationError::Config {
        target: spec.target(),
        detail: "no host to connect to".into(),
    }))
}

async fn startup(wire: &mut Wire, spec: &ConnSpec, application_name: &str) -> Result<()> {
    let what = "starting the replication connection";
    let config = spec.config();
    let user = config.get_user().unwrap_or_default();
    let params = [
        ("user", user),
        ("database", config.get_dbname().unwrap_or(user)),
        ("replication", "true"),
        ("application_name", application_name),
    ];
    frontend::startup_message(params.iter().copied(), &mut wire.wbuf).map_err(|e| {
        ReplicationError::InvalidArgument(format!(
            "could not build the startup message for {}: {e}; user, database and \
             application_name must not contain NUL bytes",
            spec.target()
        ))
    })?;
    wire.flush(what).await?;
    authenticate(wire, spec, user).await?;
    // After AuthenticationOk: parameters, the key for cancelling, then ReadyForQuery.
    loop {
        let frame = wire.read_frame(what).await?;
        let Some(frame) = wire.absorb(frame)? else {
            continue;
        };
        match frame.tag {
            b'K' => {}
            b'Z' => return Ok(()),
            b'E' => return Err(wire.server_error(what, &frame.body)),
            tag => return Err(wire.unexpected(what, tag)),
        }
    }
}

async fn authenticate(wire: &mut Wire, spec: &ConnSpec, user: &str) -> Result<()> {
    let what = "authenticating";
    let password = || {
        spec.config()
            .get_password()
            .ok_or_else(|| ReplicationError::Auth {
                target: spec.target(),
                detail: "the server asks for a password and none was given: set PGPASSWORD, add \
                         a line to the password file (~/.pgpass or PGPASSFILE), or give \
                         password= in the connection string"
                    .into(),
            })
    };
    let bad =
        |wire: &Wire, detail: String| wire.protocol_error("authentication request", what, detail);
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let frame = wire.read_frame(what).await?;
        let Some(frame) = wire.absorb(frame)? else {
            continue;
        };
        match frame.tag {
            b'R' => {}
            b'E' => return Err(wire.server_error(what, &frame.body)),
            tag => return Err(wire.unexpected(what, tag)),
        }
        let mut body = frame.body;
        if body.remaining() < 4 {
            return Err(bad(wire, "no request code".into()));
        }
        match body.get_i32() {
            0 => return Ok(()),
            3 => {
                frontend::password_message(password()?, &mut wire.wbuf)
                    .map_err(|e| bad(wire, e.to_string()))?;
            }
            5 => {
                if body.remaining() < 4 {
                    return Err(bad(wire, "MD5 request without its salt".into()));
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hash = md5_hash(user.as_bytes(), password()?, salt);
                frontend::password_message(hash.as_bytes(), &mut wire.wbuf)
                    .map_err(|e| bad(wire, e.to_string()))?;
            }
            10 => {
                let mut mechanisms = Vec::new();
                while let Some(m) = cstr(&mut body).filter(|m| !m.is_empty()) {
                    mechanisms.push(m);
                }
                if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    return Err(ReplicationError::Auth {
                        target: spec.target(),
                        detail: format!(
                            "the server offers SASL mechanisms {mechanisms:?} only, and Lifeboat \
                             speaks SCRAM-SHA-256 without TLS: allow scram-sha-256 or md5 for \
                             this connection in pg_hba.conf"
                        ),
                    });
                }
                // No TLS, so no channel binding: tell the server we do not support it.
                let state =
                    sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response(
                    sasl::SCRAM_SHA_256,
                    state.message(),
                    &mut wire.wbuf,
                )
                .map_err(|e| bad(wire, e.to_string()))?;
                scram = Some(state);
            }
            11 => {
                let state = scram
                    .as_mut()
                    .ok_or_else(|| bad(wire, "SASL continue before SASL start".into()))?;
                state
                    .update(&body)
                    .map_err(|e| bad(wire, format!("SCRAM server-first message: {e}")))?;
                frontend::sasl_response(state.message(), &mut wire.wbuf)
                    .map_err(|e| bad(wire, e.to_string()))?;
            }
            12 => {
                let state = scram
                    .as_mut()
                    .ok_or_else(|| bad(wire, "SASL final before SASL start".into()))?;
                // Checks the server's signature: it proves the server knows the password too.
                state.finish(&body).map_err(|e| ReplicationError::Auth {
                    target: spec.target(),
                    detail: format!(
                        "the server's SCRAM signature does not verify ({e}): it may not be the \
                         server you meant; check host and port"
                    ),
                })?;
                continue;
            }
            code => {
                let method = match code {
                    2 => "Kerberos V5",
                    6 => "SCM credentials",
                    7 | 8 => "GSSAPI",
                    9 => "SSPI",
                    _ => "an unknown method",
                };
                return Err(ReplicationError::Auth {
                    target: spec.target(),
                    detail: format!(
                        "the server asks for {method} (authentication request {code}), which \
                         Lifeboat does not support: use trust, peer, password, md5 or \
                         scram-sha-256 for replication connections in pg_hba.conf"
                    ),
                });
            }
        }
        wire.flush(what).await?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::super::ReplicationConnection;
    use super::*;

    fn spec(conninfo: &str) -> ConnSpec {
        ConnSpec::with_env(Some(conninfo), &|_| None).unwrap()
    }

    #[tokio::test]
    async fn silent_and_absent_servers() {
        // Accepts and never answers: the timeout covers the startup, not just the TCP connect.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = ReplicationConnection::connect(
            &spec(&format!(
                "host=127.0.0.1 port={port} user=u password=sekrit"
            )),
            "t",
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ReplicationError::ConnectTimeout { .. }),
            "{err}"
        );
        assert!(
            err.is_connect_failure() && !err.is_connection_lost(),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("sekrit"));
        drop(listener);

        // Nobody listening, on any of the hosts: the last one's error.
        let err = ReplicationConnection::connect(
            &spec(&format!("host=/nonexistent,127.0.0.1 port={port} user=u")),
            "t",
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ReplicationError::Connect { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(err.is_connect_failure());
    }
}
