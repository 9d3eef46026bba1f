//! The HTTP API's conventions against a real coordinator: error headers and bodies, datetimes, list pagination
//! through `Link`, `expand`, moves, `validate-yaml`, hardware, and the admin-only endpoints.

#![allow(clippy::unwrap_used)] // test harness: panics are how tests fail

use serde_json::json;
use spacedock_cluster_tests::{Coordinator, api};

fn raw(
    url: &str,
    token: Option<&str>,
    method: &str,
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        (_, body) => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.send(body.unwrap_or_default())
        }
    }
    .unwrap();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    (
        response.status().as_u16(),
        headers,
        response.body_mut().read_to_string().unwrap(),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A handler that answers without reading its body (here an LFS verify with a bad signature) keeps the
/// connection usable when the body comes after the headers: the next request on it is answered. (Before, hyper
/// closed such a connection, and huggingface_hub's pooled httpx connection failed its next request.)
#[test]
fn a_late_small_body_keeps_the_connection() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let mut s = std::net::TcpStream::connect(c.api_url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let oid = "a".repeat(64);
    let body = format!(r#"{{"oid":"{oid}","size":5}}"#);
    write!(
        s,
        "POST /api/lfs/verify/{oid}?op=verify&repo=x&size=5&exp=1&sig=00 HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.write_all(body.as_bytes()).unwrap();
    let read_head = |s: &mut std::net::TcpStream| {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).unwrap(),
                1,
                "the connection closed: {got:?}"
            );
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut rest = vec![0u8; length];
        s.read_exact(&mut rest).unwrap();
        head
    };
    let first = read_head(&mut s);
    assert!(first.starts_with("HTTP/1.1 403"), "{first}");
    s.write_all(b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let second = read_head(&mut s);
    assert!(second.starts_with("HTTP/1.1 401"), "{second}");
}

#[test]
fn api_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let token = c.admin_token();
    let base = c.api_url.clone();

    // Errors: status, X-Error-Code, X-Error-Message and a JSON body.
    let (status, headers, body) = raw(
        &format!("{base}/api/spaces/admin/missing"),
        Some(&token),
        "GET",
        None,
    );
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "x-error-code"), Some("RepoNotFound"));
    assert!(
        header(&headers, "x-error-message")
            .unwrap()
            .contains("admin/missing")
    );
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (status, headers, _) = raw(&format!("{base}/api/whoami-v2"), None, "GET", None);
    assert_eq!(
        (status, header(&headers, "x-error-code")),
        (401, Some("Unauthorized"))
    );
    let (status, _, _) = raw(&format!("{base}/api/cluster/status"), None, "GET", None);
    assert_eq!(status, 401);

    // validate-yaml always answers JSON.
    let good =
        json!({ "content": "---\nsdk: gradio\ncolourFrom: red\n---\n", "repoType": "space" })
            .to_string();
    let (status, _, body) = raw(
        &format!("{base}/api/validate-yaml"),
        None,
        "POST",
        Some(&good),
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert!(
        body["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colourFrom"),
        "{body}"
    );
    let bad = json!({ "content": "---\nsdk: flask\napp_port: 0\n---\n", "repoType": "space" })
        .to_string();
    let (status, _, body) = raw(
        &format!("{base}/api/validate-yaml"),
        None,
        "POST",
        Some(&bad),
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");
    let (status, _, body) = raw(
        &format!("{base}/api/validate-yaml"),
        None,
        "POST",
        Some("not json"),
    );
    assert_eq!(status, 400);
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());

    // 205 Spaces; the list pages through Link headers that carry every query parameter.
    for i in 0..205 {
        api(
            &base,
            &token,
            "POST",
            "/api/repos/create",
            Some(json!({ "name": format!("s{i:03}"), "type": "space", "sdk": "static" })),
        )
        .unwrap();
    }
    let mut url = format!(
        "{base}/api/spaces?author=admin&sort=createdAt&direction=1&expand=runtime&expand=subdomain"
    );
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let (status, headers, body) = raw(&url, Some(&token), "GET", None);
        assert_eq!(status, 200, "{body}");
        let page: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        for item in &page {
            assert!(item["runtime"]["hardware"].is_object(), "{item}");
            assert!(item["subdomain"].is_string(), "{item}");
            assert!(item["createdAt"].as_str().unwrap().ends_with('Z'), "{item}");
            assert!(
                item.get("host").is_none(),
                "unexpanded field present: {item}"
            );
            ids.push(item["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match header(&headers, "link") {
            Some(link) => {
                assert!(
                    link.ends_with("rel=\"next\"")
                        && link.contains("author=admin")
                        && link.contains("expand=runtime"),
                    "{link}"
                );
                url = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned();
            }
            None => break,
        }
    }
    assert_eq!((ids.len(), pages), (205, 3));
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ascending creation order");
    let (_, headers, body) = raw(
        &format!("{base}/api/spaces?author=admin&limit=7"),
        Some(&token),
        "GET",
        None,
    );
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap()
            .len(),
        7
    );
    assert!(header(&headers, "link").is_none());
    let (status, _, _) = raw(
        &format!("{base}/api/spaces?sort=bogus"),
        Some(&token),
        "GET",
        None,
    );
    assert_eq!(status, 400);

    // Move keeps the Space and gives it the new name's subdomain.
    api(
        &base,
        &token,
        "POST",
        "/api/repos/move",
        Some(json!({ "fromRepo": "admin/s000", "toRepo": "admin/renamed", "type": "space" })),
    )
    .unwrap();
    let moved = api(&base, &token, "GET", "/api/spaces/admin/renamed", None).unwrap();
    assert_eq!(moved["subdomain"], "admin-renamed");
    assert!(
        moved["host"]
            .as_str()
            .unwrap()
            .starts_with("http://admin-renamed.localhost:")
    );
    assert!(
        api(&base, &token, "GET", "/api/spaces/admin/s000", None)
            .unwrap_err()
            .contains("404")
    );

    // Visibility through settings; the hardware catalog with prices.
    api(
        &base,
        &token,
        "PUT",
        "/api/spaces/admin/renamed/settings",
        Some(json!({ "visibility": "private" })),
    )
    .unwrap();
    let (status, _, _) = raw(
        &format!("{base}/api/spaces/admin/renamed"),
        None,
        "GET",
        None,
    );
    assert_eq!(status, 404, "a private Space is visible anonymously");
    let hardware = api(&base, &token, "GET", "/api/spaces/hardware", None).unwrap();
    let t4 = hardware
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "t4-small")
        .unwrap();
    assert_eq!(t4["unitCostMicroUSD"], 400_000);
    assert_eq!(t4["accelerator"]["model"], "T4");
}
