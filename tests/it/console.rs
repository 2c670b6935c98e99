//! The web console (`cluebridge console`, the real binary) against a real
//! test federation: every page and action over HTTP, the login link and
//! session refusals, cross-site posts, the limits of each role (decided by
//! the node, not only hidden), a real federation's flags, no payload in any
//! answer; and against `cluebridge up`, a real headless Chromium reading
//! the rendered pages.

use crate::harness::*;
use cluebridge::devfed::{AUDITOR_NAME, DevFederation, OPERATOR_NAME};
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Every payload in these tests carries it; no console answer may.
const MARKER: &str = "PAYLOAD-MARKER-c0n5o1e";

fn payload(id: &str) -> Vec<u8> {
    format!("{MARKER} body of {id}").into_bytes()
}

// ------------------------------------------------------------ the process

/// A `cluebridge console` process: its address, the login links it
/// prints, and its standard error. Killed when dropped.
struct ConsoleProcess {
    _child: tokio::process::Child,
    addr: SocketAddr,
    /// Its first line: where it listens, for which nodes as whom.
    banner: String,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

/// `--dir DIR --as PRINCIPAL --listen LISTEN --node …`.
fn console_args(dir: &Path, principal: &str, nodes: &[&str], listen: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--dir".into(), dir.into()];
    for a in ["--as", principal, "--listen", listen] {
        args.push(a.into());
    }
    for n in nodes {
        args.push("--node".into());
        args.push(n.into());
    }
    args
}

/// `cluebridge console ARGS`, with nothing from the environment that
/// would pick a federation for it.
fn console_command(args: &[OsString]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"));
    command
        .arg("console")
        .args(args)
        .env_remove("CLUEBRIDGE_DIR")
        .env_remove("CLUEBRIDGE_CA")
        .stdin(std::process::Stdio::null());
    command
}

/// Sends each line of `reader` to a channel.
fn lines_of(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl ConsoleProcess {
    /// The console of a test federation's directory, as `principal`.
    async fn start(fed: &TestFederation, principal: &str, nodes: &[&str]) -> ConsoleProcess {
        Self::start_on(&fed.dev.dir, principal, nodes, "127.0.0.1:0").await
    }

    /// The console of the development federation in `dir` (a test
    /// federation's or one `cluebridge up` made), listening on `listen`.
    async fn start_on(dir: &Path, principal: &str, nodes: &[&str], listen: &str) -> ConsoleProcess {
        Self::start_with(&console_args(dir, principal, nodes, listen)).await
    }

    /// `cluebridge console ARGS`, once it says where it listens.
    async fn start_with(args: &[OsString]) -> ConsoleProcess {
        let mut child = console_command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cluebridge console");
        let mut lines = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        let first = next_line(&mut lines, |l| l.starts_with("cluebridge console on ")).await;
        let addr = first
            .strip_prefix("cluebridge console on http://")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        ConsoleProcess {
            _child: child,
            addr,
            banner: first,
            lines,
            stderr,
        }
    }

    /// The next login link the console prints (path and query).
    async fn next_link(&mut self) -> String {
        let line = next_line(&mut self.lines, |l| l.starts_with("open http://")).await;
        let url = line.trim_start_matches("open ").trim();
        let path = url
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_else(|| panic!("not a link: {line:?}"));
        assert!(path.contains("token="), "{line}");
        path
    }

    /// Opens a session with the next link, as a browser would.
    async fn login(&mut self) -> Browser {
        let link = self.next_link().await;
        let answer = http(self.addr, "GET", &link, &[], None).await;
        assert_eq!(answer.status, 303, "{}", answer.body);
        let set_cookie = answer.header("set-cookie").expect("a session cookie");
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        assert!(set_cookie.contains("Path=/"), "{set_cookie}");
        assert_eq!(answer.header("location").as_deref(), Some("/"));
        Browser {
            addr: self.addr,
            cookie: set_cookie
                .split(';')
                .next()
                .expect("name=value")
                .to_string(),
            seen: vec![answer.body],
        }
    }
}

async fn next_line(
    lines: &mut mpsc::UnboundedReceiver<String>,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + 30 * SECOND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.recv()).await {
            Ok(Some(line)) if wanted(&line) => return line,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the console's output ended"),
            Err(_) => panic!("the console printed no such line within 30 s"),
        }
    }
}

// ------------------------------------------------------------ HTTP

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Host` defaults to the
/// address), read to its end.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    // A refusal may come (and the connection close) before the whole
    // request is written: what was answered is read all the same.
    let _ = socket.write_all(request.as_bytes()).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(30 * SECOND, socket.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s");
    if let Err(e) = read {
        assert!(!raw.is_empty(), "no answer: {e}");
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut head_lines = head.lines();
    let status = head_lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// A browser with a console session: every answer it saw is kept, for the
/// payload check.
struct Browser {
    addr: SocketAddr,
    cookie: String,
    seen: Vec<String>,
}

impl Browser {
    async fn get(&mut self, path: &str) -> Answer {
        let answer = http(self.addr, "GET", path, &[("cookie", &self.cookie)], None).await;
        self.seen.push(answer.body.clone());
        answer
    }

    /// A form post from the console's own page, as a browser sends it.
    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = format!("http://{}", self.addr);
        self.post_with(
            path,
            form,
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Answer {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut headers = vec![("cookie", self.cookie.as_str())];
        headers.extend_from_slice(extra);
        let answer = http(self.addr, "POST", path, &headers, Some(&body)).await;
        self.seen.push(answer.body.clone());
        answer
    }

    /// The session's CSRF token, from any page's meta tag.
    async fn csrf(&mut self) -> String {
        let page = self.get("/").await;
        attribute_after(&page.body, "name=\"csrf-token\" content=\"").expect("csrf meta")
    }

    /// No answer this browser saw carried a payload byte.
    fn assert_no_payload(&self) {
        for body in &self.seen {
            assert!(
                !body.contains(MARKER),
                "a console answer carries a payload:\n{body}"
            );
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else if b == b' ' {
                "+".into()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The text up to the next `"` after `prefix`.
fn attribute_after(body: &str, prefix: &str) -> Option<String> {
    let at = body.find(prefix)? + prefix.len();
    body[at..].split('"').next().map(str::to_string)
}

/// The text content right inside the element with this id.
fn text_of_id(body: &str, id: &str) -> Option<String> {
    let at = body.find(&format!("id=\"{id}\""))?;
    let open = at + body[at..].find('>')? + 1;
    let close = open + body[open..].find('<')?;
    Some(body[open..close].trim().to_string())
}

/// The inner HTML of the `<tr>` that holds `marker`.
fn row_with<'a>(body: &'a str, marker: &str) -> Option<&'a str> {
    let at = body.find(marker)?;
    let start = body[..at].rfind("<tr")?;
    let end = at + body[at..].find("</tr>")?;
    Some(&body[start..end])
}

// ------------------------------------------------------------ scenarios

/// Discipline sends `dl-1` and `dl-2` to public security, whose receiver
/// lets both lapse (one attempt each: dead letters there), and `ok-1`,
/// which public security acknowledges. Every payload carries the marker.
async fn dead_letters_and_one_acknowledged(fed: &TestFederation) {
    let mut discipline = fed.client(DISCIPLINE);
    for id in ["dl-1", "dl-2"] {
        submit(
            &mut discipline,
            submit_request(id, MessageKind::ClueTransfer, SECURITY, &payload(id)),
        )
        .await;
    }
    let mut security = fed.client(SECURITY);
    {
        let mut stream = receiver(&mut security, 8, 1).await;
        next(&mut stream, 10 * SECOND).await;
        next(&mut stream, 10 * SECOND).await;
    }
    for id in ["dl-1", "dl-2"] {
        wait_state(&mut discipline, id, SentState::DeadLettered, 15 * SECOND).await;
    }
    submit(
        &mut discipline,
        submit_request(
            "ok-1",
            MessageKind::ClueTransfer,
            SECURITY,
            &payload("ok-1"),
        ),
    )
    .await;
    let mut stream = receiver(&mut security, 8, 30).await;
    let d = next(&mut stream, 10 * SECOND).await;
    assert_eq!(d.message_id, "ok-1");
    security
        .ack(pb::AckRequest {
            lease: lease_of(&d),
        })
        .await
        .expect("ack");
    wait_state(
        &mut discipline,
        "ok-1",
        SentState::Acknowledged,
        15 * SECOND,
    )
    .await;
}

/// The state of a message in public security's custody, as its operator
/// sees it through the Admin service.
async fn custody_state(fed: &TestFederation, id: &str) -> String {
    fed.admin(SECURITY)
        .get_message(pb::GetMessageRequest {
            sender_node: DISCIPLINE.into(),
            message_id: id.into(),
        })
        .await
        .expect("get message")
        .into_inner()
        .state
}

fn few_attempts(n: &mut cluebridge::config::NodeFile) {
    n.delivery.max_deliveries = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_and_actions_for_an_operator() {
    let fed = TestFederation::start_with(few_attempts, &[DISCIPLINE, SECURITY]).await;
    dead_letters_and_one_acknowledged(&fed).await;
    // Personnel is down: a suggestion waits in discipline's outbox.
    submit(
        &mut fed.client(DISCIPLINE),
        submit_request(
            "rect-1",
            MessageKind::RectificationSuggestion,
            PERSONNEL,
            &payload("rect-1"),
        ),
    )
    .await;
    let mut console = ConsoleProcess::start(&fed, OPERATOR_NAME, &[DISCIPLINE, SECURITY]).await;
    let mut browser = console.login().await;

    // Overview: store health, depths, peers, charts; a strict CSP.
    let page = browser.get("/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        text_of_id(&page.body, "depth-discipline-outbox-personnel").as_deref(),
        Some("1"),
        "{}",
        page.body
    );
    assert_eq!(
        text_of_id(&page.body, "depth-public_security-dead").as_deref(),
        Some("2")
    );
    assert!(page.body.contains("serving"), "{}", page.body);
    assert!(
        text_of_id(&page.body, "peer-discipline-public_security").is_some_and(|t| t.contains("up")),
        "{}",
        page.body
    );
    // Personnel is down: after a few failed calls with rect-1, its badge
    // says so.
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let live = browser.get("/live/overview").await.body;
        let badge = text_of_id(&live, "peer-discipline-personnel");
        if badge.as_deref() == Some("personnel down") {
            assert!(
                live.contains("id=\"peer-discipline-personnel\" class=\"badge state-down\""),
                "{live}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "personnel's badge says {badge:?}, not down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page.body.contains("<svg"), "charts");
    // Operators are not auditors: the node refused the audit head.
    assert!(
        page.body.contains("The audit log — not shown"),
        "{}",
        page.body
    );
    // The live part, as the script fetches it.
    let live = browser.get("/live/overview").await;
    assert_eq!(live.status, 200);
    assert_eq!(
        text_of_id(&live.body, "depth-discipline-outbox-personnel").as_deref(),
        Some("1")
    );
    assert!(!live.body.contains("<html"), "a fragment, not a page");

    // Queues and peers.
    let page = browser.get("/nodes/discipline/queues").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("outbox → personnel"), "{}", page.body);
    assert!(page.body.contains("https://127.0.0.1:"), "peer endpoints");

    // Dead letters, each with its requeue and discard.
    let page = browser.get("/nodes/public_security/dead-letters").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for id in ["dl-1", "dl-2"] {
        let row = row_with(&page.body, &format!("discipline/{id}")).expect("a row");
        assert!(
            row.contains(&format!(
                "/nodes/public_security/dead-letters/discipline/{id}/requeue"
            )),
            "{row}"
        );
        assert!(row.contains("/discard"), "{row}");
    }

    // The confirmation step changes nothing.
    let confirm = browser
        .get("/nodes/public_security/dead-letters/discipline/dl-1/requeue")
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(confirm.body.contains("method=\"post\""), "{}", confirm.body);
    let csrf = attribute_after(&confirm.body, "name=\"csrf\" value=\"").expect("csrf field");
    assert_eq!(custody_state(&fed, "dl-1").await, "dead_letter");

    // Cross-site posts are refused before they reach the node.
    let path = "/nodes/public_security/dead-letters/discipline/dl-1/requeue";
    let no_token = browser.post(path, &[]).await;
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    assert!(no_token.body.contains("CSRF"), "{}", no_token.body);
    let wrong_token = browser.post(path, &[("csrf", &"0".repeat(64))]).await;
    assert_eq!(wrong_token.status, 403);
    let other_site = browser
        .post_with(
            path,
            &[("csrf", &csrf)],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(other_site.status, 403, "{}", other_site.body);
    assert!(other_site.body.contains("Cross-site request refused"));
    let fetch_site = browser
        .post_with(
            path,
            &[("csrf", &csrf)],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(fetch_site.status, 403);
    let no_cookie = http(
        console.addr,
        "POST",
        path,
        &[],
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(no_cookie.status, 401);
    assert_eq!(custody_state(&fed, "dl-1").await, "dead_letter");

    // The requeue itself, and the event the node recorded.
    let done = browser.post(path, &[("csrf", &csrf)]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("discipline/dl-1 requeued."),
        "{}",
        done.body
    );
    let event = row_with(&done.body, "data-event=\"requeued\"").expect("the recorded event");
    assert!(event.contains(OPERATOR_NAME), "{event}");
    assert_ne!(custody_state(&fed, "dl-1").await, "dead_letter");

    // Discard, with its reason.
    let confirm = browser
        .get("/nodes/public_security/dead-letters/discipline/dl-2/discard")
        .await;
    assert_eq!(confirm.status, 200);
    assert!(confirm.body.contains("name=\"reason\""), "{}", confirm.body);
    let done = browser
        .post(
            "/nodes/public_security/dead-letters/discipline/dl-2/discard",
            &[
                ("csrf", &csrf),
                ("reason", "handed over on paper, letter 117"),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let event = row_with(&done.body, "data-event=\"discarded\"").expect("the recorded event");
    assert!(
        event.contains("handed over on paper, letter 117"),
        "{event}"
    );
    assert_eq!(custody_state(&fed, "dl-2").await, "discarded");
    // A refusal per message is shown as the node gave it.
    let again = browser
        .post(
            "/nodes/public_security/dead-letters/discipline/dl-2/requeue",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("was not requeued"), "{}", again.body);
    assert!(again.body.contains("FAILED_PRECONDITION"), "{}", again.body);

    // A message's metadata and its timeline of receipts.
    let page = browser
        .get("/nodes/discipline/messages/discipline/ok-1")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    for kind in ["accepted", "delivered", "acknowledged"] {
        let row = row_with(&page.body, &format!("data-event=\"{kind}\"")).expect(kind);
        assert!(row.contains("data-source=\"receipt\""), "{row}");
    }
    assert!(page.body.contains("bytes (never shown here)"));
    // Operators have no bundle: no verify button.
    assert!(!page.body.contains("id=\"verify\""), "{}", page.body);
    let lookup = browser
        .get("/nodes/discipline/messages?sender=&id=ok-1")
        .await;
    assert_eq!(lookup.status, 303);
    assert_eq!(
        lookup.header("location").as_deref(),
        Some("/nodes/discipline/messages/discipline/ok-1")
    );
    let search = browser.get("/nodes/discipline/messages").await;
    assert_eq!(search.status, 200);
    assert!(
        search.body.contains("needs the audit role"),
        "{}",
        search.body
    );
    let missing = browser
        .get("/nodes/discipline/messages/discipline/nope")
        .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(missing.body.contains("NOT_FOUND"), "{}", missing.body);
    let invalid = browser
        .get("/nodes/discipline/messages/discipline/a%20b")
        .await;
    assert_eq!(invalid.status, 400);
    let verify = browser
        .get("/nodes/discipline/messages/discipline/ok-1/verify")
        .await;
    assert_eq!(verify.status, 403, "{}", verify.body);
    assert!(verify.body.contains("PERMISSION_DENIED"));
    let audit = browser.get("/audit").await;
    assert_eq!(audit.status, 200);
    assert!(
        audit.body.contains("The audit log — not shown"),
        "{}",
        audit.body
    );

    // The assets, from inside the binary.
    let css = browser.get("/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type")
            .is_some_and(|t| t.starts_with("text/css"))
    );
    let js = browser.get("/assets/console.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .is_some_and(|t| t.starts_with("text/javascript"))
    );
    assert_eq!(browser.get("/nodes/nowhere/queues").await.status, 404);
    assert_eq!(browser.get("/no/such/page").await.status, 404);

    browser.assert_no_payload();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_requests_without_its_token() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    submit(
        &mut fed.client(DISCIPLINE),
        submit_request("t-1", MessageKind::ClueTransfer, SECURITY, &payload("t-1")),
    )
    .await;
    // Public security is down: the console starts all the same.
    let mut console = ConsoleProcess::start(&fed, OPERATOR_NAME, &[DISCIPLINE, SECURITY]).await;
    let addr = console.addr;
    assert!(addr.ip().is_loopback(), "loopback by default: {addr}");

    // No cookie: refused, pages and assets alike, and nothing shown.
    for path in [
        "/",
        "/live/overview",
        "/nodes/discipline/queues",
        "/assets/console.css",
    ] {
        let answer = http(addr, "GET", path, &[], None).await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.body);
        assert!(!answer.body.contains("depth-"), "{}", answer.body);
        assert!(answer.header("set-cookie").is_none());
        assert!(answer.header("content-security-policy").is_some());
    }
    // A wrong token: refused, no cookie.
    let wrong = http(
        addr,
        "GET",
        &format!("/?token={}", "0".repeat(64)),
        &[],
        None,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    // The printed link works once.
    let link = console.next_link().await;
    let first = http(addr, "GET", &link, &[], None).await;
    assert_eq!(first.status, 303);
    assert!(first.header("set-cookie").is_some());
    let again = http(addr, "GET", &link, &[], None).await;
    assert_eq!(again.status, 401, "a used link");
    assert!(again.header("set-cookie").is_none());
    // The console printed the next one; it opens a second session, and
    // keeps the rest of the address.
    let next = console.next_link().await;
    assert_ne!(next, link);
    let deep = http(
        addr,
        "GET",
        &next.replace("/?", "/nodes/discipline/queues?"),
        &[],
        None,
    )
    .await;
    assert_eq!(deep.status, 303);
    assert_eq!(
        deep.header("location").as_deref(),
        Some("/nodes/discipline/queues")
    );
    let mut browser = console.login().await;
    let page = browser.get("/").await;
    assert_eq!(page.status, 200);
    let down = page
        .body
        .split("id=\"node-public_security\"")
        .nth(1)
        .expect("a panel for public security");
    assert!(down.contains("unreachable (UNAVAILABLE)"), "{down}");
    assert!(
        page.body
            .contains("id=\"depth-discipline-outbox-public_security\"")
    );

    // A forged cookie value is no session.
    let name = browser.cookie.split('=').next().expect("name").to_string();
    let forged = http(
        addr,
        "GET",
        "/",
        &[("cookie", &format!("{name}={}", "a".repeat(64)))],
        None,
    )
    .await;
    assert_eq!(forged.status, 401);
    // Another Host (a DNS-rebinding page) is refused even with the cookie.
    let rebound = http(
        addr,
        "GET",
        "/",
        &[
            ("cookie", &browser.cookie),
            ("host", &format!("evil.example:{}", addr.port())),
        ],
        None,
    )
    .await;
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    // Only GET and form posts.
    let put = http(addr, "PUT", "/", &[("cookie", &browser.cookie)], None).await;
    assert_eq!(put.status, 405);
    // Bodies are bounded.
    let csrf = browser.csrf().await;
    let big = format!("csrf={csrf}&reason={}", "x".repeat(64 * 1024));
    let origin = format!("http://{addr}");
    let huge = http(
        addr,
        "POST",
        "/nodes/discipline/dead-letters/discipline/t-1/discard",
        &[("cookie", &browser.cookie), ("origin", &origin)],
        Some(&big),
    )
    .await;
    assert_eq!(huge.status, 413, "{}", huge.body);
    browser.assert_no_payload();

    // A console on every interface says what that means.
    let mut open =
        ConsoleProcess::start_on(&fed.dev.dir, OPERATOR_NAME, &[DISCIPLINE], "0.0.0.0:0").await;
    let warning = next_line(&mut open.stderr, |l| l.contains("warning")).await;
    assert!(warning.contains("not a loopback address"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_for_an_auditor_verifies_and_cannot_requeue() {
    let fed = TestFederation::start_with(few_attempts, &[DISCIPLINE, SECURITY]).await;
    dead_letters_and_one_acknowledged(&fed).await;
    let mut console = ConsoleProcess::start(&fed, AUDITOR_NAME, &[DISCIPLINE, SECURITY]).await;
    let mut browser = console.login().await;

    // The overview shows the audit head, and no queues: the node refused
    // them to this principal.
    let page = browser.get("/").await;
    assert_eq!(page.status, 200);
    assert!(
        text_of_id(&page.body, "audit-head-discipline").is_some(),
        "{}",
        page.body
    );
    assert!(!page.body.contains("id=\"depth-"), "{}", page.body);
    assert!(
        page.body.contains("Queues and peers — not shown"),
        "{}",
        page.body
    );

    // Dead letters: the node refuses the list; no requeue button.
    let page = browser.get("/nodes/public_security/dead-letters").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("PERMISSION_DENIED"), "{}", page.body);
    assert!(!page.body.contains("/requeue"), "{}", page.body);
    let confirm = browser
        .get("/nodes/public_security/dead-letters/discipline/dl-1/requeue")
        .await;
    assert_eq!(confirm.status, 403);
    assert!(
        !confirm.body.contains("method=\"post\""),
        "no form: {}",
        confirm.body
    );
    // A forged requeue (with this session's own CSRF token) reaches the
    // node, which refuses it.
    let csrf = browser.csrf().await;
    let forged = browser
        .post(
            "/nodes/public_security/dead-letters/discipline/dl-1/requeue",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(
        forged.body.contains("The node refused the requeue"),
        "{}",
        forged.body
    );
    assert!(forged.body.contains("PERMISSION_DENIED"), "{}", forged.body);
    assert_eq!(custody_state(&fed, "dl-1").await, "dead_letter");

    // A message: receipts and audit entries from the bundle.
    let page = browser
        .get("/nodes/discipline/messages/discipline/ok-1")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    for kind in ["accepted", "delivered", "acknowledged"] {
        assert!(
            page.body
                .contains(&format!("data-event=\"{kind}\" data-source=\"receipt\"")),
            "{kind}: {}",
            page.body
        );
    }
    assert!(
        page.body.contains("data-source=\"audit entry\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("subject of ok-1"),
        "auditors see the subject"
    );
    assert!(page.body.contains("id=\"verify\""));
    assert!(!page.body.contains("/requeue"));

    // Verify: PASS per check, with the checkpoints public security holds.
    let deadline = Instant::now() + 20 * SECOND;
    let verify = loop {
        let v = browser
            .get("/nodes/discipline/messages/discipline/ok-1/verify")
            .await;
        assert_eq!(v.status, 200, "{}", v.body);
        if v.body.contains("witnessed checkpoints agree") || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        text_of_id(&verify.body, "verdict").is_some(),
        "{}",
        verify.body
    );
    assert!(
        verify.body.contains("PASS</strong> — every check passed"),
        "{}",
        verify.body
    );
    assert!(!verify.body.contains(">FAIL<"), "{}", verify.body);
    for check in [
        "envelope-signature",
        "payload-digest",
        "receipt-1",
        "witnessed-checkpoints",
    ] {
        let row = row_with(&verify.body, &format!("id=\"check-{check}\"")).expect(check);
        assert!(row.contains("PASS"), "{row}");
    }
    assert!(verify.body.contains("the federation's trust list"));
    assert!(
        verify.body.contains("witnessed checkpoints agree"),
        "public security witnessed discipline's checkpoint: {}",
        verify.body
    );

    // The bundle, without its payload.
    let file = browser
        .get("/nodes/discipline/messages/discipline/ok-1/bundle.json")
        .await;
    assert_eq!(file.status, 200);
    assert_eq!(
        file.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        file.header("content-disposition")
            .is_some_and(|d| d.starts_with("attachment") && d.contains("discipline-ok-1")),
        "{:?}",
        file.header("content-disposition")
    );
    let bundle: cluebridge::audit::bundle::Bundle =
        serde_json::from_str(&file.body).expect("a bundle");
    assert!(bundle.envelope.payload.is_none());
    assert_eq!(bundle.receipts.len(), 3);

    // Search by case.
    let found = browser.get("/nodes/discipline/messages?case=CASE-7").await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert!(
        found
            .body
            .contains("/nodes/discipline/messages/discipline/ok-1"),
        "{}",
        found.body
    );
    let bad_kind = browser.get("/nodes/discipline/messages?kind=poem").await;
    assert_eq!(bad_kind.status, 400);

    // Checkpoints, and which peers witnessed them.
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let page = browser.get("/audit").await;
        assert_eq!(page.status, 200);
        let witnessed = page
            .body
            .split("id=\"checkpoint-discipline-")
            .skip(1)
            .any(|row| {
                row.split("</tr>")
                    .next()
                    .is_some_and(|r| r.contains("public_security"))
            });
        if witnessed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of discipline shown as witnessed by public_security:\n{}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    browser.assert_no_payload();

    // Against another federation's trust list (the same node and key ids,
    // other keys) the same bundle fails, and the page names the check.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let other = DevFederation::create(&elsewhere.path().join("dev"), [1, 2, 3, 4], |_| {})
        .expect("another development federation");
    let mut args = console_args(&fed.dev.dir, AUDITOR_NAME, &[DISCIPLINE], "127.0.0.1:0");
    args.extend(["--trust".into(), other.dir.join("federation.toml").into()]);
    let mut distrusting = ConsoleProcess::start_with(&args).await;
    let mut browser = distrusting.login().await;
    let verify = browser
        .get("/nodes/discipline/messages/discipline/ok-1/verify")
        .await;
    assert_eq!(verify.status, 200, "{}", verify.body);
    assert!(
        verify.body.contains(
            "FAIL</strong> — keys: key discipline-k1 of discipline in the bundle differs from \
             the trust list's"
        ),
        "{}",
        verify.body
    );
    let row = row_with(&verify.body, "id=\"check-keys\"").expect("the keys check");
    assert!(row.contains(">FAIL<"), "{row}");
    assert!(!verify.body.contains("every check passed"));
    // No signature is passed with keys the trust list does not hold: the
    // verifier stops at the keys.
    for check in ["envelope-signature", "receipt-1", "receipt-2", "receipt-3"] {
        assert!(
            row_with(&verify.body, &format!("id=\"check-{check}\""))
                .is_none_or(|r| r.contains(">FAIL<")),
            "{check}: {}",
            verify.body
        );
    }
    browser.assert_no_payload();
}

/// The follow-up and case pages, for an auditor (allowed: metadata, no
/// payloads) and an operator (refused by the node); overdue first, and the
/// overview counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_follow_ups_and_a_case() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut late = submit_request(
        "rs-late",
        MessageKind::RectificationSuggestion,
        PERSONNEL,
        &payload("rs-late"),
    );
    late.reply_by_ms = cluebridge::now_ms() + 1_000;
    submit(&mut discipline, late).await;
    submit(
        &mut discipline,
        submit_request(
            "rs-open",
            MessageKind::RectificationSuggestion,
            PERSONNEL,
            &payload("rs-open"),
        ),
    )
    .await;
    // Polled until the deadline has passed and the sweep has seen it.
    let deadline = Instant::now() + 15 * SECOND;
    loop {
        let overdue = discipline
            .list_follow_ups(pb::ListFollowUpsRequest {
                states: vec!["overdue".into()],
                ..Default::default()
            })
            .await
            .expect("follow-ups")
            .into_inner()
            .follow_ups;
        if !overdue.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "rs-late never became overdue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut console = ConsoleProcess::start(&fed, AUDITOR_NAME, &[DISCIPLINE]).await;
    let mut browser = console.login().await;
    let page = browser.get("/").await;
    assert_eq!(
        text_of_id(&page.body, "overdue-discipline").as_deref(),
        Some("1"),
        "{}",
        page.body
    );
    // The overview says where follow-ups and cases are, and who sees them.
    assert!(
        page.body.contains("on each node's follow-ups page")
            && page.body.contains("auditors and the back office"),
        "{}",
        page.body
    );
    let page = browser.get("/nodes/discipline/follow-ups").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let (late_at, open_at) = (page.body.find("rs-late"), page.body.find("rs-open"));
    assert!(
        late_at.is_some() && late_at < open_at,
        "overdue first: {}",
        page.body
    );
    assert!(
        page.body.contains("<strong>overdue</strong>"),
        "{}",
        page.body
    );
    let page = browser.get("/nodes/discipline/follow-ups?overdue=1").await;
    assert!(
        page.body.contains("rs-late") && !page.body.contains("rs-open"),
        "{}",
        page.body
    );
    let page = browser.get("/nodes/discipline/cases/CASE-7").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for text in [
        "Case CASE-7 at discipline",
        "rs-late",
        "rs-open",
        "Follow-up: ",
        "accepted",
    ] {
        assert!(page.body.contains(text), "{text}: {}", page.body);
    }
    let page = browser.get("/nodes/discipline/cases/NO-SUCH-CASE").await;
    assert!(
        page.body.contains("no message under this case"),
        "{}",
        page.body
    );
    browser.assert_no_payload();

    // The operator's console: the node refuses it the follow-ups.
    let mut console = ConsoleProcess::start(&fed, OPERATOR_NAME, &[DISCIPLINE]).await;
    let mut browser = console.login().await;
    let page = browser.get("/nodes/discipline/follow-ups").await;
    assert!(
        page.body
            .contains("need a principal with the submit, receive or audit role"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("rs-late"), "{}", page.body);
    browser.assert_no_payload();
}

// ------------------------------------------------------------ a real federation's flags

/// The flags of a real federation for `nodes` (each node with the
/// certificate presented to it, a path in the test federation's directory
/// without `.pem`): `--endpoint`, `--cert` and `--key` per node, in order,
/// `--ca` and `--trust` once, every file named as an operator of a real
/// federation names them. Listens on a free port.
fn real_federation_args(fed: &TestFederation, nodes: &[(&str, &str)]) -> Vec<OsString> {
    let dev = &fed.dev.dir;
    let mut args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
    args.extend(["--ca".into(), dev.join("ca.pem").into()]);
    args.extend(["--trust".into(), dev.join("federation.toml").into()]);
    for (node, cert) in nodes {
        args.extend(["--node".into(), (*node).into()]);
        args.extend([
            "--endpoint".into(),
            format!("https://127.0.0.1:{}", fed.ports[*node]).into(),
        ]);
        args.extend(["--cert".into(), dev.join(format!("{cert}.pem")).into()]);
        args.extend(["--key".into(), dev.join(format!("{cert}-key.pem")).into()]);
    }
    args
}

/// Runs a console that must refuse to start: it exits non-zero within
/// 30 s, having printed no address and no link (so it served nothing).
/// Its standard error.
async fn console_refuses(args: &[OsString]) -> String {
    let out = tokio::time::timeout(
        30 * SECOND,
        console_command(args).kill_on_drop(true).output(),
    )
    .await
    .expect("the console exits within 30 s")
    .expect("run cluebridge console");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it started: {stdout}{stderr}");
    assert!(!stdout.contains("http://"), "{stdout}");
    stderr
}

/// The console of a real federation: every file named by a flag, a
/// principal per node (discipline's operator, public security's auditor),
/// no development federation to fall back on; and the refusals to start
/// when the flags do not add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_with_a_real_federations_flags() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request("t-1", MessageKind::ClueTransfer, SECURITY, &payload("t-1")),
    )
    .await;
    wait_state(&mut discipline, "t-1", SentState::Delivered, 15 * SECOND).await;
    // No development federation here: everything comes from the flags.
    let empty = tempfile::tempdir().expect("tmp");
    let with_dir = |mut args: Vec<OsString>| {
        args.extend(["--dir".into(), empty.path().into()]);
        args
    };
    let args = with_dir(real_federation_args(
        &fed,
        &[
            (DISCIPLINE, "clients/discipline/operator"),
            (SECURITY, "clients/public_security/auditor"),
        ],
    ));
    let mut console = ConsoleProcess::start_with(&args).await;
    assert!(
        console
            .banner
            .ends_with("for discipline as operator, public_security as auditor (Ctrl-C to stop)"),
        "{}",
        console.banner
    );
    let mut browser = console.login().await;
    let page = browser.get("/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    // Each node answered its own principal: discipline's queues to its
    // operator, public security's audit head to its auditor.
    assert_eq!(
        text_of_id(&page.body, "depth-discipline-inbox").as_deref(),
        Some("0"),
        "{}",
        page.body
    );
    assert!(
        text_of_id(&page.body, "audit-head-public_security").is_some(),
        "{}",
        page.body
    );
    let queues = browser.get("/nodes/discipline/queues").await;
    assert_eq!(queues.status, 200, "{}", queues.body);
    let search = browser.get("/nodes/public_security/messages").await;
    assert_eq!(search.status, 200, "{}", search.body);
    assert!(
        !search.body.contains("needs the audit role"),
        "{}",
        search.body
    );
    // The bundle of what public security received, verified against the
    // --trust list.
    let verify = browser
        .get("/nodes/public_security/messages/discipline/t-1/verify")
        .await;
    assert_eq!(verify.status, 200, "{}", verify.body);
    assert!(
        verify.body.contains("PASS</strong> — every check passed")
            && verify.body.contains("the federation's trust list"),
        "{}",
        verify.body
    );
    browser.assert_no_payload();
    drop(console);

    // Two --node, one --endpoint.
    let mut args = with_dir(real_federation_args(
        &fed,
        &[(DISCIPLINE, "clients/discipline/operator")],
    ));
    args.extend(["--node".into(), SECURITY.into()]);
    let err = console_refuses(&args).await;
    assert!(
        err.contains("--endpoint was given 1 for 2 --node")
            && err.contains("once per --node, in the same order"),
        "{err}"
    );

    // A node's own certificate is no principal's.
    let err = console_refuses(&with_dir(real_federation_args(
        &fed,
        &[(DISCIPLINE, "certs/discipline")],
    )))
    .await;
    assert!(
        err.contains("certs/discipline.pem")
            && err.contains("is node discipline's own certificate")
            && err.contains("presents a principal's client certificate"),
        "{err}"
    );

    // Nor is another node's principal: rights end at its own node.
    let err = console_refuses(&with_dir(real_federation_args(
        &fed,
        &[(DISCIPLINE, "clients/public_security/operator")],
    )))
    .await;
    assert!(
        err.contains("names principal operator of node public_security, not of discipline"),
        "{err}"
    );
}

// ------------------------------------------------------------ a real browser

/// Where Chromium is: `CLUEBRIDGE_CHROMIUM` when set, else Debian's
/// `/usr/bin/chromium` (what `.ci/run` installs when it is missing), else
/// `chromium` or `chromium-browser` on the `PATH`.
fn find_chromium() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os("CLUEBRIDGE_CHROMIUM") {
        let named = PathBuf::from(named);
        // Asked for by name: a wrong path is a mistake to report, not a
        // reason to skip the test.
        assert!(
            named.is_file(),
            "CLUEBRIDGE_CHROMIUM={} is not a file",
            named.display()
        );
        return Some(named);
    }
    let debian = Path::new("/usr/bin/chromium");
    if debian.is_file() {
        return Some(debian.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Says that a test is skipped, and why, on the process's standard error
/// itself: libtest captures `eprintln!` of a passing test, which would
/// make a skipped run look like a pass.
fn say_skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Runs headless Chromium with a fresh profile on `url` with `extra`
/// arguments, under a deadline: its standard output.
async fn chromium(chromium: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let mut out = String::new();
    let mut stdout = child.stdout.take().expect("stdout");
    tokio::time::timeout(Duration::from_secs(90), async {
        stdout.read_to_string(&mut out).await.expect("read");
        child.wait().await.expect("chromium exits")
    })
    .await
    .expect("chromium finished within 90 s");
    out
}

/// Where the screenshot goes: `docs/console-overview.png` when asked
/// (`CLUEBRIDGE_UPDATE_SCREENSHOT=1`) or when it is missing, otherwise the
/// test's scratch directory, so that test runs leave the tree unchanged.
fn screenshot_path() -> PathBuf {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console-overview.png");
    if std::env::var_os("CLUEBRIDGE_UPDATE_SCREENSHOT").is_some() || !docs.exists() {
        docs
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-overview.png")
    }
}

/// `cluebridge up` as the README runs it, its output in a log file. Killed
/// when dropped (a test that fails half-way leaves no federation running);
/// [`UpProcess::stop`] stops it as Ctrl-C does.
struct UpProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl UpProcess {
    fn start(dir: &Path, base_port: u16, log: PathBuf) -> UpProcess {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
            .args(["up", "--base-port", &base_port.to_string(), "--dir"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cluebridge up");
        UpProcess { child, log }
    }

    /// What it printed so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, as Ctrl-C: it stops its nodes and exits 0, within 30 s.
    async fn stop(mut self) {
        let status = interrupt(&mut self.child, 30 * SECOND)
            .await
            .unwrap_or_else(|| panic!("`up` still runs 30 s after SIGINT:\n{}", self.log()));
        assert!(status.success(), "{status:?}:\n{}", self.log());
    }
}

/// [`run_cluebridge`] on a blocking thread, off the async workers.
async fn cli(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        run_cluebridge(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the cluebridge command ran")
}

/// `cluebridge send`, as the README has it: clue transfer `id` from
/// discipline to public security, its payload marked.
async fn send_clue(dir: &str, id: &str) {
    let payload = format!("{MARKER} body of {id}");
    let (ok, out) = cli(&[
        "send",
        "--dir",
        dir,
        "--node",
        DISCIPLINE,
        "--to",
        SECURITY,
        "--kind",
        "clue_transfer",
        "--subject",
        "Clue on case 12",
        "--case",
        "CASE-12",
        "--id",
        id,
        "--payload",
        &payload,
    ])
    .await;
    assert!(ok, "send {id}: {out}");
}

/// `cluebridge receive --ack` at public security for one message: its id.
async fn receive_one(dir: &str) -> String {
    let (ok, out) = cli(&[
        "receive", "--dir", dir, "--node", SECURITY, "--count", "1", "--ack",
    ])
    .await;
    assert!(ok && out.contains("-> acknowledged"), "receive: {out}");
    out.lines()
        .find_map(|l| l.strip_prefix("message ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no message in {out}"))
        .to_string()
}

/// The README's way: `cluebridge up`, clues sent and received with the
/// CLI, `cluebridge console` on discipline and public security; then
/// headless Chromium reads the overview (queue depths, peers, charts,
/// refreshed by its script) and a message's timeline of receipts from the
/// rendered DOM, and takes the README's screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    const TEST: &str = "console_in_a_real_browser";
    let Some(browser) = find_chromium() else {
        say_skipped(
            TEST,
            "no Chromium (CLUEBRIDGE_CHROMIUM is unset, /usr/bin/chromium is missing and \
             neither chromium nor chromium-browser is on the PATH); .ci/run installs Debian's \
             chromium package when it can",
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir_path = tmp.path().join("dev");
    let dir = dir_path.to_str().expect("a UTF-8 path");
    let up = UpProcess::start(&dir_path, free_base_port(), tmp.path().join("up.log"));

    // The nodes serve once each answers its operator's `queues`.
    let deadline = Instant::now() + 60 * SECOND;
    for node in [DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL] {
        loop {
            let (ok, out) = cli(&["queues", "--dir", dir, "--node", node]).await;
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} does not answer within 60 s: {out}\n`up` printed:\n{}",
                up.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let mut console = ConsoleProcess::start_on(
        &dir_path,
        OPERATOR_NAME,
        &[DISCIPLINE, SECURITY],
        "127.0.0.1:0",
    )
    .await;

    // Traffic while the console samples, so that its charts have a few
    // points: each round sends two clues and public security's receiving
    // system acknowledges one, then the test waits for the console's next
    // sample. The other clues stay in public security's inbox.
    let mut watcher = console.login().await;
    let (mut sent, mut acknowledged) = (0, Vec::new());
    let deadline = Instant::now() + 90 * SECOND;
    loop {
        let seen = outbox_points(&watcher.get("/live/overview").await.body);
        if seen >= 8 {
            break;
        }
        for _ in 0..2 {
            send_clue(dir, &format!("clue-{sent}")).await;
            sent += 1;
        }
        acknowledged.push(receive_one(dir).await);
        while outbox_points(&watcher.get("/live/overview").await.body) == seen {
            assert!(
                Instant::now() < deadline,
                "the console takes no new samples"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let waiting = (sent - acknowledged.len()).to_string();

    // The console's figures have caught up: every clue left discipline,
    // the unreceived ones wait in public security's inbox.
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let live = watcher.get("/live/overview").await.body;
        let outbox = text_of_id(&live, "depth-discipline-outbox-public_security");
        let inbox = text_of_id(&live, "depth-public_security-inbox");
        if outbox.as_deref() == Some("0") && inbox.as_deref() == Some(waiting.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the console shows {outbox:?} in discipline's outbox and {inbox:?} in the inbox, \
             not 0 and {waiting}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The first clue acknowledged: its receipts have come back to
    // discipline.
    let message = format!("/nodes/discipline/messages/discipline/{}", acknowledged[0]);
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let page = watcher.get(&message).await.body;
        if page.contains("data-event=\"acknowledged\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no acknowledged receipt at discipline: {page}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    watcher.assert_no_payload();

    let base = format!("http://{}", console.addr);

    // The overview as the browser renders it, after its script refreshed
    // the live part once (under the console's CSP): the queue depths and
    // every peer up.
    let dom = chromium(
        &browser,
        &format!("{base}{}", console.next_link().await),
        &["--virtual-time-budget=5000", "--dump-dom"],
    )
    .await;
    assert!(dom.contains("<h1>Overview</h1>"), "{dom}");
    assert!(
        dom.contains("data-live-status=\"\">live<"),
        "the script did not refresh the overview: {dom}"
    );
    assert_eq!(
        text_of_id(&dom, "depth-public_security-inbox").as_deref(),
        Some(waiting.as_str()),
        "{dom}"
    );
    assert_eq!(
        text_of_id(&dom, "depth-discipline-outbox-public_security").as_deref(),
        Some("0"),
        "{dom}"
    );
    for (node, peer) in [
        (DISCIPLINE, PERSONNEL),
        (DISCIPLINE, SECURITY),
        (DISCIPLINE, JUDICIAL),
        (SECURITY, DISCIPLINE),
        (SECURITY, PERSONNEL),
        (SECURITY, JUDICIAL),
    ] {
        assert_eq!(
            text_of_id(&dom, &format!("peer-{node}-{peer}")),
            Some(format!("{peer} up")),
            "{dom}"
        );
    }
    assert!(dom.contains("<svg"), "charts: {dom}");
    assert!(!dom.contains(MARKER));
    assert!(!dom.contains("will appear here"), "a stale note: {dom}");

    // A message page: its timeline of receipts.
    let link = console.next_link().await;
    let dom = chromium(
        &browser,
        &format!("{base}{}", link.replace("/?", &format!("{message}?"))),
        &["--dump-dom"],
    )
    .await;
    assert!(dom.contains("id=\"timeline\""), "{dom}");
    for kind in ["accepted", "delivered", "acknowledged"] {
        assert!(
            dom.contains(&format!("data-event=\"{kind}\" data-source=\"receipt\"")),
            "{kind}: {dom}"
        );
    }
    assert!(!dom.contains(MARKER));

    // The screenshot of the overview for the README.
    let path = screenshot_path();
    let _ = std::fs::remove_file(&path);
    let shot = format!("--screenshot={}", path.display());
    chromium(
        &browser,
        &format!("{base}{}", console.next_link().await),
        &[&shot, "--window-size=1280,900", "--hide-scrollbars"],
    )
    .await;
    let png = std::fs::read(&path).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 20_000, "{} bytes: an empty page?", png.len());
    eprintln!("screenshot of the overview: {}", path.display());

    drop(console);
    up.stop().await;
}

/// How many points the console's depth chart of discipline holds (its
/// samples so far).
fn outbox_points(body: &str) -> usize {
    let Some(panel) = body
        .split("id=\"node-discipline\"")
        .nth(1)
        .and_then(|rest| rest.split("id=\"node-").next())
    else {
        return 0;
    };
    // The panel's charts: accepted, into custody, then the outboxes' depth.
    panel
        .split("points=\"")
        .nth(3)
        .and_then(|p| p.split('"').next())
        .map_or(0, |p| p.split_whitespace().count())
}
