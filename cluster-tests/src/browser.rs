//! A real browser for tests: headless Chromium (Debian's `chromium`) driven over the DevTools protocol, to check
//! a Space's page as people use it: its scripts load through the ingress and its buttons reach the app. One page
//! per `Browser`; the process is killed when it is dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

#[derive(Debug)]
pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The DevTools session of the page (`Target.attachToTarget` with `flatten`).
    session: Option<String>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with one page open at `url`. Chromium resolves every `*.localhost` name to this machine.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (ops/test.sh installs it)");
        // Once ready it prints `DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID`; the rest of its
        // output is read and dropped so that it never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium did not open its DevTools endpoint within 30 s");
        let (socket, _) = tungstenite::connect(&endpoint).expect("connecting to chromium");
        let mut browser = Browser {
            child,
            socket,
            session: None,
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": url }))
            .unwrap();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .unwrap();
        browser.session = attached["sessionId"].as_str().map(str::to_owned);
        browser
    }

    /// One DevTools command (on the page once attached); its result, or the error it got.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .expect("writing to chromium");
        loop {
            let Message::Text(text) = self.socket.read().expect("reading from chromium") else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] != id {
                continue; // an event
            }
            return match reply.get("error") {
                Some(e) => Err(format!("{method}: {e}")),
                None => Ok(reply["result"].clone()),
            };
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited), or why it has none.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params)?;
        match result.get("exceptionDetails") {
            Some(e) => Err(format!("{expression}: {e}")),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Waits until `expression` is true in the page; fails naming `what`, with the page's text.
    pub fn wait_for(&mut self, expression: &str, limit: Duration, what: &str) {
        let started = Instant::now();
        loop {
            let value = self.eval(expression);
            if value == Ok(Value::Bool(true)) {
                return;
            }
            if started.elapsed() > limit {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("{what}: not within {limit:?} ({value:?}); the page shows:\n{text:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
