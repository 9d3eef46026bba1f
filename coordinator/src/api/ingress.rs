//! The ingress: requests whose `Host` is `SUBDOMAIN.APPS_DOMAIN[:PORT]` go to that Space's app instead of the
//! API. The coordinator that holds the agent's link (the leader) opens a tunnel stream to the agent and speaks
//! HTTP/1.1 to the app over it, streaming both bodies; a follower passes the request to the leader's ingress.
//! Upgrades (websockets) are piped both ways. A sleeping Space is woken by a request: a browser gets a page
//! that reloads until the app answers, other clients are held until it does (within its startup timeout). A
//! Space that does not run answers a short page saying why. Static Spaces are served from their repo by any
//! coordinator (`static_space`). Every request served counts as the Space's activity (`crate::activity`),
//! which keeps it awake.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::access::can_see;
use spacedock_coordinator_core::state::{AllocationPhase, Repo, Stage, State};
use spacedock_shared::wire::TunnelOpen;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

use super::Api;

/// How long the leader waits for a node's link to come back before answering 503.
const LINK_WAIT: Duration = Duration::from_secs(5);

/// Marks a request one coordinator already passed on, so it is never passed on again.
const FORWARDED: &str = "x-spacedock-forwarded";

/// The subdomain a `Host` names under the apps domain, if it does.
fn subdomain<'a>(host: &'a str, apps_domain: &str) -> Option<&'a str> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let label = host.strip_suffix(apps_domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

/// Middleware: Space hosts go to the ingress, everything else to the API.
pub async fn route(AxumState(api): AxumState<Api>, request: Request, next: Next) -> Response {
    // HTTP/1.1 names the host in `Host`, HTTP/2 in the `:authority` of the URI.
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    match subdomain(&host, &api.apps_domain) {
        Some(sub) => {
            let sub = sub.to_owned();
            serve(api, &sub, request).await
        }
        None => next.run(request).await,
    }
}

/// Where the Space's traffic goes.
enum Target {
    Agent {
        space: String,
        node: String,
        allocation: String,
    },
    Asleep {
        space: String,
        startup_timeout_s: u64,
    },
    /// A static Space: its files, from any coordinator.
    Static(super::static_space::Site),
    /// On its way up (APP_STARTING): the page says so, and a woken request keeps waiting.
    Starting(String),
    Page(StatusCode, String),
}

/// The target of a request for subdomain `sub`; `visible` says whether the caller may see the repo.
fn find(state: &State, sub: &str, visible: impl Fn(&Repo) -> bool) -> Target {
    let not_found = || {
        Target::Page(
            StatusCode::NOT_FOUND,
            format!("No Space at {sub}. If it is private, sign in at {LOGIN_PATH}."),
        )
    };
    let Some((key, repo)) = state
        .subdomains
        .get(sub)
        .and_then(|key| Some((key, state.repos.get(key)?)))
    else {
        return not_found();
    };
    let Some(space) = repo.space.as_ref().filter(|_| visible(repo)) else {
        return not_found();
    };
    if let (Stage::Running, Some(app_file), Some(commit)) =
        (space.stage, &space.app_file, &repo.sha)
    {
        return Target::Static(super::static_space::Site {
            uid: repo.uid.clone(),
            git: repo.git.clone(),
            commit: commit.clone(),
            app_file: app_file.clone(),
            variables: space
                .variables
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
        });
    }
    let live = state
        .allocations
        .values()
        .find(|a| &a.space == key && a.phase == AllocationPhase::Running);
    match (space.stage, live) {
        (Stage::Running | Stage::RunningBuilding, Some(a)) => Target::Agent {
            space: key.clone(),
            node: a.node.clone(),
            allocation: a.id.clone(),
        },
        (Stage::Sleeping, _) => Target::Asleep {
            space: key.clone(),
            startup_timeout_s: space.image.as_ref().map_or(60, |i| i.startup_timeout_s),
        },
        (Stage::AppStarting, _) | (Stage::Running, None) => {
            Target::Starting(format!("{} is starting.", repo.id))
        }
        (Stage::Paused, _) => Target::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is paused. Its owner can restart it.", repo.id),
        ),
        (stage, _) => {
            let why = space
                .error_message
                .as_deref()
                .map(|m| format!(": {}", m.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            Target::Page(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} is {}{why}", repo.id, stage.as_str()),
            )
        }
    }
}

/// Serves a request for a Space, adding the headers its README asks for (`custom_headers`,
/// `disable_embedding`) to what the app answers.
async fn serve(api: Api, sub: &str, request: Request) -> Response {
    let extra = api.node.read_local(|s| {
        s.subdomains
            .get(sub)
            .and_then(|key| s.repos.get(key))
            .and_then(|r| r.space.as_ref())
            .map(|space| space.headers.clone())
            .unwrap_or_default()
    });
    let mut response = serve_app(api, sub, request).await;
    for (name, value) in extra {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The cookie a browser holds a token in for private Spaces (set by `/__spacedock/login` on the Space's host).
const TOKEN_COOKIE: &str = "spacedock_token";
const LOGIN_PATH: &str = "/__spacedock/login";

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Moves the token cookie, if any, into an `Authorization` header (unless one is there) and out of the
/// request, so the app never sees it.
fn token_from_cookie(request: &mut Request) {
    let Some(token) = cookie(request.headers(), TOKEN_COOKIE).map(str::to_owned) else {
        return;
    };
    let headers = request.headers_mut();
    if !headers.contains_key(header::AUTHORIZATION)
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    let rest: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.starts_with(&format!("{TOKEN_COOKIE}=")) && !pair.is_empty())
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// `GET /__spacedock/login` on a Space's host: a form for a token; `POST`: checks that the token may see the
/// Space and keeps it in an HttpOnly cookie for this host.
async fn login(api: &Api, sub: &str, request: Request) -> Response {
    if request.method() != axum::http::Method::POST {
        return html_response(
            StatusCode::OK,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in</title></head><body>\
             <form method=\"post\"><label>Access token <input type=\"password\" name=\"token\"></label>\
             <button>Open the Space</button></form></body></html>\n"
                .into(),
        );
    }
    let body = axum::body::to_bytes(request.into_body(), 16 * 1024)
        .await
        .unwrap_or_default();
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    let visible = api
        .read(&headers, |state, p| {
            let found = find(state, sub, |repo| can_see(state, p, repo));
            Ok(p.is_some() && !matches!(found, Target::Page(StatusCode::NOT_FOUND, _)))
        })
        .await
        .unwrap_or(false);
    if !visible || token.bytes().any(|b| !b.is_ascii_graphic()) {
        return page(
            StatusCode::UNAUTHORIZED,
            "That token cannot open this Space.",
        );
    }
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let h = response.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age=2592000"
    )) {
        h.insert(header::SET_COOKIE, v);
    }
    response
}

async fn serve_app(api: Api, sub: &str, mut request: Request) -> Response {
    if request.uri().path() == LOGIN_PATH {
        return login(&api, sub, request).await;
    }
    token_from_cookie(&mut request);
    let headers = request.headers().clone();
    let found = api
        .read(&headers, |state, p| {
            Ok(find(state, sub, |repo| can_see(state, p, repo)))
        })
        .await;
    let target = match found {
        Ok(target) => target,
        Err(e) => return e.into_response(),
    };
    let (space, node, allocation) = match target {
        Target::Page(status, text) => return page(status, &text),
        Target::Starting(text) => return page(StatusCode::SERVICE_UNAVAILABLE, &text),
        Target::Static(site) => return super::static_space::serve(&api, site, request).await,
        _ if api.node.status().role != "leader" => return via_leader(&api, request).await,
        Target::Agent {
            space,
            node,
            allocation,
        } => (space, node, allocation),
        Target::Asleep {
            space,
            startup_timeout_s,
        } => {
            // The caller may see it (checked above); anyone who may see a Space may wake it.
            if let Err(e) = api
                .propose(
                    None,
                    Command::Wake {
                        space: space.clone(),
                    },
                )
                .await
            {
                tracing::debug!(space, error = ?e, "wake not needed");
            }
            api.scheduler_kick.notify_one();
            let browser = headers
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if browser {
                return loading_page(sub);
            }
            // Others wait for the app, as long as its startup may take.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(startup_timeout_s);
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match api.node.read_local(|s| find(s, sub, |_| true)) {
                    Target::Agent {
                        space,
                        node,
                        allocation,
                    } => break (space, node, allocation),
                    // It failed, or was paused, while waking: say so now.
                    Target::Page(status, text) => return page(status, &text),
                    _ if tokio::time::Instant::now() > deadline => {
                        return page(
                            StatusCode::GATEWAY_TIMEOUT,
                            "The Space did not wake within its startup timeout.",
                        );
                    }
                    Target::Static(site) => {
                        return super::static_space::serve(&api, site, request).await;
                    }
                    Target::Starting(_) | Target::Asleep { .. } => {}
                }
            }
        }
    };
    api.activity.touch(&space, super::system_clock());
    // The leader holds the agents' links; after a restart or failover they come back within seconds.
    let deadline = tokio::time::Instant::now() + LINK_WAIT;
    while !api.links.has(&node) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if api.links.has(&node) {
        tunnel(&api, &node, allocation, request).await
    } else {
        page(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The Space's node {node} is not connected; try again shortly."),
        )
    }
}

/// What a browser gets while a Space wakes: a page that reloads itself.
fn loading_page(sub: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>Waking up</title></head><body><p>{sub} is waking up; this page reloads until it answers.</p>\
         </body></html>\n"
    );
    let mut response = html_response(StatusCode::SERVICE_UNAVAILABLE, html);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

fn html_response(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn page(status: StatusCode, text: &str) -> Response {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>spacedock</title></head>\
         <body><p>{escaped}</p></body></html>\n"
    );
    html_response(status, html)
}

fn bad_gateway(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "ingress: {what}");
    page(StatusCode::BAD_GATEWAY, &format!("{what}: {e}"))
}

async fn tunnel(api: &Api, node: &str, allocation: String, request: Request) -> Response {
    let opened = api.links.open(node, TunnelOpen { allocation }.into()).await;
    match opened {
        Ok((tx, rx, buffered)) => {
            let io = tokio::io::join(std::io::Cursor::new(buffered).chain(rx), tx);
            proxy(io, request).await
        }
        Err(e) => bad_gateway("cannot reach the Space's node", format!("{e:#}")),
    }
}

/// A follower passes the request (a Space's, or a run log's) to the leader, which holds the agents' links.
pub(super) async fn via_leader(api: &Api, mut request: Request) -> Response {
    if request.headers().contains_key(FORWARDED) {
        return bad_gateway(
            "no coordinator holds the link",
            "the Space's node is not connected",
        );
    }
    let node = &api.node;
    let leader_url = node
        .status()
        .leader
        .and_then(|l| node.read_local(|s| s.members.get(&l).map(|m| m.api_url.clone())));
    let Some(addr) = leader_url
        .as_deref()
        .and_then(|u| u.strip_prefix("http://"))
        .map(|u| u.trim_end_matches('/').to_owned())
    else {
        return bad_gateway("no leader to pass the request to", "unknown");
    };
    match tokio::net::TcpStream::connect(&addr).await {
        Ok(stream) => {
            request
                .headers_mut()
                .insert(FORWARDED, HeaderValue::from_static("1"));
            proxy(stream, request).await
        }
        Err(e) => bad_gateway("cannot reach the leader", e),
    }
}

/// Speaks HTTP/1.1 over `io` for one request; an upgrade is piped both ways afterwards.
async fn proxy<T>(io: T, mut request: Request) -> Response
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await {
            Ok(pair) => pair,
            Err(e) => return bad_gateway("the app's connection failed", e),
        };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "ingress connection ended");
        }
    });
    // The app speaks HTTP/1.1 whatever the client spoke (HTTP/2 arrives with `:authority`, not `Host`).
    if request.version() != axum::http::Version::HTTP_11 {
        if !request.headers().contains_key(header::HOST)
            && let Some(authority) = request.uri().authority().map(|a| a.to_string())
            && let Ok(v) = HeaderValue::from_str(&authority)
        {
            request.headers_mut().insert(header::HOST, v);
        }
        *request.version_mut() = axum::http::Version::HTTP_11;
        // HTTP/1.1 servers expect the origin form (`/path?query`), not HTTP/2's absolute URI.
        if let Some(origin) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = axum::http::Uri::from(origin);
        }
    }
    let wants_upgrade = request.headers().contains_key(header::UPGRADE);
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));
    let mut response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => return bad_gateway("the app did not answer", e),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let app_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(app)) = (client_upgrade.await, app_upgrade.await) {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut app = hyper_util::rt::TokioIo::new(app);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
            }
        });
    }
    response.map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_hosts_are_recognised() {
        assert_eq!(
            subdomain("alice-demo.localhost", "localhost"),
            Some("alice-demo")
        );
        assert_eq!(
            subdomain("alice-demo.localhost:8080", "localhost"),
            Some("alice-demo")
        );
        assert_eq!(subdomain("localhost:8080", "localhost"), None);
        assert_eq!(subdomain("a.b.localhost", "localhost"), None);
        assert_eq!(subdomain("alice-demo.example.com", "localhost"), None);
        assert_eq!(subdomain("xlocalhost", "localhost"), None);
    }

    #[test]
    fn the_token_cookie_becomes_authorization_and_never_reaches_the_app() {
        let mut request = Request::builder()
            .uri("/")
            .header(header::COOKIE, "a=1; spacedock_token=hf_secret; b=2")
            .body(axum::body::Body::empty())
            .unwrap();
        token_from_cookie(&mut request);
        let h = request.headers();
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "Bearer hf_secret");
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        // A request's own Authorization is kept.
        let mut request = Request::builder()
            .uri("/")
            .header(header::AUTHORIZATION, "Bearer mine")
            .header(header::COOKIE, "spacedock_token=hf_secret")
            .body(axum::body::Body::empty())
            .unwrap();
        token_from_cookie(&mut request);
        assert_eq!(
            request.headers().get(header::AUTHORIZATION).unwrap(),
            "Bearer mine"
        );
        assert!(request.headers().get(header::COOKIE).is_none());
    }
}
