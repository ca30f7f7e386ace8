//! The daemon's HTTP side: the dashboard, `/metrics`, the JSON API, `/healthz` and the role
//! endpoints HAProxy checks (`/primary`, `/replica`, ...: `lifeboat_ha::routes`).
//!
//! Handlers only read the latest snapshot (a read lock held while rendering), so a slow
//! repository or a stuck PostgreSQL never makes a page hang. docs/DAEMON_API.md describes every
//! route.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use serde_json::json;

use crate::role::RoleCell;
use crate::status::SharedSnapshot;
use crate::{dashboard, metrics};

/// What a 401 says: enough for an operator to fix the request without reading the docs.
const UNAUTHORIZED: &str = "401 Unauthorized: this Lifeboat daemon requires a token.\n\
Send the header `Authorization: Bearer TOKEN`, or add `?token=TOKEN` to the URL.\n\
The token is the first line of the file named by `token_file` in the [serve] section.\n";

/// Pages must never be cached: an old "recoverable" page is worse than none.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

/// Everything the page needs is inline; forbid the rest, so that even an escaping bug could not
/// load or send anything elsewhere.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// All routes. With `token`, every route but `/healthz` and the role endpoints needs it (header
/// or `?token=`): the role endpoints reveal only the role, and HAProxy's checks send no token.
pub fn router(snapshot: SharedSnapshot, token: Option<String>, roles: RoleCell) -> Router {
    let protected = Router::new()
        .route("/", get(dashboard_page))
        .route("/metrics", get(metrics_page))
        .route("/api/status", get(api_status))
        .route("/api/backups", get(api_backups))
        .route("/api/drills", get(api_drills))
        .route("/api/jobs", get(api_jobs))
        .with_state(snapshot);
    let protected = match token {
        Some(token) => protected.route_layer(middleware::from_fn_with_state(token, require_token)),
        None => protected,
    };
    // GET, HEAD and OPTIONS, as Patroni answers them. `GET /` stays the dashboard (behind the
    // token); `HEAD /` and `OPTIONS /` (HAProxy's default check) are Patroni's `/`, the primary.
    let role_methods = MethodFilter::GET
        .or(MethodFilter::HEAD)
        .or(MethodFilter::OPTIONS);
    let mut router = protected.route(
        "/",
        on(MethodFilter::HEAD.or(MethodFilter::OPTIONS), role_endpoint).with_state(roles.clone()),
    );
    for path in lifeboat_ha::routes::PATHS.iter().filter(|p| **p != "/") {
        router = router.route(
            path,
            on(role_methods, role_endpoint).with_state(roles.clone()),
        );
    }
    router
        .route("/healthz", get(|| async { ([NO_STORE], "ok\n") }))
        .fallback(|| async { (StatusCode::NOT_FOUND, [NO_STORE], "404 Not Found\n") })
}

/// Serve until `shutdown` resolves, then finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn require_token(State(token): State<String>, request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    // Parsed here rather than extracted, so a malformed query is a 401, not a 400 that skips auth.
    let query = Query::<HashMap<String, String>>::try_from_uri(request.uri()).ok();
    let from_query = query
        .as_ref()
        .and_then(|q| q.get("token"))
        .map(String::as_str);
    // An empty token (an empty token file) matches nothing: fail closed.
    let ok = [bearer, from_query]
        .into_iter()
        .flatten()
        .any(|given| !given.is_empty() && constant_time_eq(given.as_bytes(), token.as_bytes()));
    if ok {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Bearer realm=\"lifeboat\""),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            NO_STORE,
        ],
        UNAUTHORIZED,
    )
        .into_response()
}

/// The credentials of an `Authorization: Bearer TOKEN` header. The scheme is matched in any
/// case (RFC 7235: "bearer", "BEARER"), after one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
/// The time depends only on the expected token's length.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

/// A role endpoint's answer from the last published role view: 200, 503 (or 400 for a malformed
/// `?lag=`) with a small JSON body saying why.
async fn role_endpoint(State(roles): State<RoleCell>, uri: axum::http::Uri) -> Response {
    let view = roles.latest();
    let now = std::time::Instant::now();
    let Some(answer) = lifeboat_ha::routes::respond(uri.path(), uri.query(), view.as_ref(), now)
    else {
        return (StatusCode::NOT_FOUND, [NO_STORE], "404 Not Found\n").into_response();
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match serde_json::to_string(&answer.body) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "application/json"), NO_STORE],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [NO_STORE],
            format!("cannot serialise the role: {e}\n"),
        )
            .into_response(),
    }
}

async fn dashboard_page(State(snapshot): State<SharedSnapshot>) -> Response {
    let page = dashboard::render(&*snapshot.read().await);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            NO_STORE,
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The URL may carry `?token=`: never hand it to another site.
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        page,
    )
        .into_response()
}

/// Prometheus text by default; OpenMetrics when the scraper prefers it (Prometheus asks).
async fn metrics_page(State(snapshot): State<SharedSnapshot>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let s = snapshot.read().await;
    let (content_type, body) = if openmetrics {
        (
            metrics::OPENMETRICS_CONTENT_TYPE,
            metrics::render_openmetrics(&s),
        )
    } else {
        (metrics::CONTENT_TYPE, metrics::render(&s))
    };
    ([(header::CONTENT_TYPE, content_type), NO_STORE], body).into_response()
}

fn json_response(value: Result<serde_json::Value, serde_json::Error>) -> Response {
    match value.and_then(|v| serde_json::to_string_pretty(&v)) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json"), NO_STORE], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [NO_STORE],
            format!("cannot serialise the status: {e}\n"),
        )
            .into_response(),
    }
}

async fn api_status(State(snapshot): State<SharedSnapshot>) -> Response {
    json_response(serde_json::to_value(&*snapshot.read().await))
}

async fn api_backups(State(snapshot): State<SharedSnapshot>) -> Response {
    let s = snapshot.read().await;
    json_response(
        serde_json::to_value(&s.backups)
            .and_then(|b| Ok(json!({"backups": b, "window": serde_json::to_value(&s.window)?}))),
    )
}

async fn api_drills(State(snapshot): State<SharedSnapshot>) -> Response {
    let s = snapshot.read().await;
    json_response(serde_json::to_value(&s.drills).map(|d| json!({"drills": d})))
}

async fn api_jobs(State(snapshot): State<SharedSnapshot>) -> Response {
    let s = snapshot.read().await;
    json_response(serde_json::to_value(&s.jobs).map(|j| json!({"jobs": j})))
}

/// A listener on every address `listen` resolved to (`localhost` may be 127.0.0.1 and ::1). An
/// address this host does not have (::1 with IPv6 off) is skipped; any other failure, or no
/// address at all, stops the start.
pub async fn bind_all(
    listen: &str,
    addrs: &[SocketAddr],
) -> Result<Vec<tokio::net::TcpListener>, String> {
    let failed = |addr: &SocketAddr, e: &std::io::Error| {
        format!(
            "cannot listen on {addr} ([serve] listen = {listen:?}): {e}; is another lifeboat \
             serve running? Change [serve] listen or --listen"
        )
    };
    let mut listeners = Vec::new();
    let mut skipped = None;
    for addr in addrs {
        if listeners
            .iter()
            .any(|l: &tokio::net::TcpListener| l.local_addr().ok() == Some(*addr))
        {
            continue;
        }
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listeners.push(listener),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) =>
            {
                tracing::warn!("not listening on {addr} ([serve] listen = {listen:?}): {e}");
                skipped = Some(failed(addr, &e));
            }
            Err(e) => return Err(failed(addr, &e)),
        }
    }
    match (listeners.is_empty(), skipped) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(format!("[serve] listen = {listen:?} names no address")),
        (false, _) => Ok(listeners),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;
    use crate::status::Snapshot;

    fn snapshot() -> SharedSnapshot {
        let shared = Snapshot::shared();
        shared
            .try_write()
            .map(|mut w| *w = samples::snapshot())
            .ok();
        shared
    }

    /// The router on a real socket; the server stops when the returned sender is dropped.
    async fn start(token: Option<&str>) -> (String, tokio::sync::oneshot::Sender<()>) {
        start_with_roles(token, RoleCell::default()).await
    }

    async fn start_with_roles(
        token: Option<&str>,
        roles: RoleCell,
    ) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(snapshot(), token.map(String::from), roles);
        tokio::spawn(async move {
            serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        (format!("http://{addr}"), tx)
    }

    async fn get(url: &str) -> (u16, String, String) {
        let r = reqwest::get(url).await.expect("request");
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ct, r.text().await.expect("body"))
    }

    /// The status of a GET of `url` with `token` in an `Authorization: Bearer` header.
    async fn status_with_token(url: &str, token: &str) -> u16 {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn every_route_answers_with_its_content_type() {
        let (base, _stop) = start(None).await;

        let (status, ct, body) = get(&format!("{base}/")).await;
        assert_eq!(status, 200);
        assert_eq!(ct, "text/html; charset=utf-8");
        assert!(body.contains("id=\"recoverable\"") && body.contains("20260102T100000Z"));

        let (status, ct, body) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        assert!(
            body.lines().any(|l| l == "lifeboat_recoverable 1.0"),
            "{body}"
        );

        let client = reqwest::Client::new();
        let r = client
            .get(format!("{base}/metrics"))
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )
            .send()
            .await
            .expect("request");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("application/openmetrics-text")
        );
        assert!(r.text().await.expect("body").ends_with("# EOF\n"));

        let (status, ct, body) = get(&format!("{base}/api/status")).await;
        assert_eq!((status, ct.as_str()), (200, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["recoverable"], true);
        assert_eq!(v["host"], "db1");
        assert_eq!(v["backups"][0]["label"], "20260102T100000Z");

        let (_, _, body) = get(&format!("{base}/api/backups")).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["backups"][0]["start_lsn"], "0/1000028");
        assert!(v["window"].is_object());

        let (_, _, body) = get(&format!("{base}/api/drills")).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["drills"][0]["passed"], true);

        let (_, _, body) = get(&format!("{base}/api/jobs")).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["jobs"][0]["job"], "backup");

        let (status, _, body) = get(&format!("{base}/healthz")).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        let (status, _, _) = get(&format!("{base}/nope")).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn a_token_protects_everything_but_healthz() {
        let (base, _stop) = start(Some("s3cret token")).await;
        for path in [
            "/",
            "/metrics",
            "/api/status",
            "/api/backups",
            "/api/drills",
            "/api/jobs",
        ] {
            let (status, ct, body) = get(&format!("{base}{path}")).await;
            assert_eq!(status, 401, "{path}");
            assert!(ct.starts_with("text/plain"));
            assert!(body.contains("Authorization: Bearer"), "{body}");

            let url = format!("{base}{path}");
            assert_eq!(status_with_token(&url, "s3cret tokem").await, 401, "{path}");
            assert_eq!(status_with_token(&url, "s3cret token").await, 200, "{path}");
        }
        // In the URL, percent-encoded as a browser would.
        let (status, _, _) = get(&format!("{base}/?token=s3cret%20token")).await;
        assert_eq!(status, 200);
        let (status, _, _) = get(&format!("{base}/?token=s3cret")).await;
        assert_eq!(status, 401);
        let (status, _, body) = get(&format!("{base}/healthz")).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }

    #[tokio::test]
    async fn the_bearer_scheme_is_matched_in_any_case() {
        let (base, _stop) = start(Some("s3cret token")).await;
        let status = |scheme: &'static str| {
            let url = format!("{base}/api/status");
            async move {
                reqwest::Client::new()
                    .get(url)
                    .header("authorization", format!("{scheme} s3cret token"))
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16()
            }
        };
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert_eq!(status(scheme).await, 200, "{scheme}");
        }
        for scheme in ["Basic", "Bearers", ""] {
            assert_eq!(status(scheme).await, 401, "{scheme:?}");
        }
        assert_eq!(bearer_token("bearer   tok "), Some("tok"));
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearertok"), None);
    }

    /// The role endpoints need no token, answer GET, HEAD and OPTIONS from the cell, and leave
    /// `GET /` to the (protected) dashboard.
    #[tokio::test]
    async fn role_endpoints_answer_without_a_token() {
        use lifeboat_ha::state::{Role, RoleView};
        let roles = RoleCell::default();
        let (base, _stop) = start_with_roles(Some("s3cret"), roles.clone()).await;
        let client = reqwest::Client::new();
        let ask = |method: &'static str, path: &'static str| {
            let req = client.request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{base}{path}"),
            );
            async move {
                let r = req.send().await.expect("request");
                (r.status().as_u16(), r.text().await.expect("body"))
            }
        };
        // Nothing observed yet: every check but /liveness fails.
        assert_eq!(ask("GET", "/primary").await.0, 503);
        assert_eq!(ask("GET", "/liveness").await.0, 200);

        let now = std::time::Instant::now;
        roles.publish(RoleView {
            role: Role::Primary,
            ..crate::role::stopped_view(now())
        });
        for method in ["GET", "HEAD", "OPTIONS"] {
            for (path, want) in [
                ("/primary", 200),
                ("/master", 200),
                ("/read-write", 200),
                ("/read-only", 200),
                ("/health", 200),
                ("/liveness", 200),
                ("/replica", 503),
                ("/replica?lag=16MB", 503),
                ("/replica?lag=bad", 400),
            ] {
                let (status, body) = ask(method, path).await;
                assert_eq!(status, want, "{method} {path}");
                if method == "HEAD" {
                    assert_eq!(body, "", "{path}");
                } else {
                    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
                    assert_eq!(v["role"], "primary", "{path}");
                }
            }
        }
        let (status, body) = ask("GET", "/primary").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (status, &v["state"], &v["reason"]),
            (200, &json!("running"), &json!(null))
        );
        // `/`: HEAD and OPTIONS are Patroni's primary check; GET is the dashboard.
        assert_eq!(ask("OPTIONS", "/").await.0, 200);
        assert_eq!(ask("HEAD", "/").await.0, 200);
        assert_eq!(ask("GET", "/").await.0, 401);
        assert_eq!(status_with_token(&format!("{base}/"), "s3cret").await, 200);
        // Everything else still needs the token; other methods are refused.
        assert_eq!(ask("GET", "/api/status").await.0, 401);
        assert_eq!(ask("POST", "/primary").await.0, 405);

        roles.publish(RoleView {
            role: Role::Replica,
            lag_bytes: Some(1 << 20),
            streaming: true,
            ..crate::role::stopped_view(now())
        });
        assert_eq!(ask("OPTIONS", "/").await.0, 503);
        assert_eq!(ask("GET", "/replica").await.0, 200);
        assert_eq!(ask("GET", "/replica?lag=1MB").await.0, 200);
        assert_eq!(ask("GET", "/replica?lag=1kB").await.0, 503);
        let (_, body) = ask("GET", "/primary").await;
        assert!(body.contains("not the primary"), "{body}");
    }

    #[tokio::test]
    async fn graceful_shutdown_ends_serve() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            router(Snapshot::shared(), None, RoleCell::default()),
            async {
                let _ = rx.await;
            },
        ));
        let _ = tx.send(());
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("serve returns after shutdown")
            .expect("join");
        assert!(done.is_ok());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
