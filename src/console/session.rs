//! Who may use the console: a one-time login link, the session cookie it
//! is exchanged for, the CSRF token of each session, and the guard that
//! every request passes (the Host it names, its cookie, and for a form
//! post where it comes from and its CSRF token). Also the security headers
//! every answer carries.
//!
//! The console runs on a person's machine and holds certificates that may
//! requeue and discard messages, so a page open in the same browser must
//! not be able to use it: the cookie is `HttpOnly` and `SameSite=Strict`
//! (another site's page cannot send it), posts whose `Origin` or
//! `Sec-Fetch-Site` says they come from elsewhere are refused, and every
//! form carries a token that only the console's own pages know. On a
//! loopback address, requests naming another Host are refused, which
//! stops a DNS-rebinding page from talking to it under its own name.

use super::{Console, views};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions held at once; a login beyond it ends the least recently used.
pub const MAX_SESSIONS: usize = 16;
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// The largest form body taken (a discard reason is at most 1 KiB).
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// The query parameter that carries a login token.
pub const TOKEN_PARAM: &str = "token";

/// The Content-Security-Policy of every answer: the console's own CSS and
/// script only, no inline code or style, no frames, forms posted only to
/// itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// What a handler learns about the request's session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The token the session's forms carry.
    pub csrf: String,
}

/// The login token and the sessions. A std Mutex: it is held only to look
/// up, insert or remove an entry, never across an `.await`.
#[derive(Debug)]
pub struct Sessions {
    cookie_name: String,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The one login token that works now; each use replaces it.
    login: String,
    /// By cookie value.
    sessions: HashMap<String, Session>,
}

#[derive(Debug)]
struct Session {
    csrf: String,
    last_seen: Instant,
}

/// A fresh 256-bit random token, as 64 hex digits.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// No sessions yet, and a first login token. Cookies are told apart by
    /// port (browsers share them between the ports of one host), so two
    /// consoles on one machine do not log each other out.
    pub fn new(port: u16) -> Sessions {
        Sessions {
            cookie_name: format!("cluebridge_console_{port}"),
            inner: Mutex::new(Inner {
                login: random_token(),
                sessions: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The login token that works now.
    pub fn login_token(&self) -> String {
        self.lock().login.clone()
    }

    /// Exchanges the login token for a new session: `(cookie value, the
    /// next login token)`, or `None` if `token` is not the current one.
    pub fn redeem(&self, token: &str) -> Option<(String, String)> {
        let mut inner = self.lock();
        if !same_token(token, &inner.login) {
            return None;
        }
        inner.login = random_token();
        let now = Instant::now();
        inner
            .sessions
            .retain(|_, s| now.duration_since(s.last_seen) < SESSION_IDLE);
        while inner.sessions.len() >= MAX_SESSIONS {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => inner.sessions.remove(&k),
                None => break,
            };
        }
        let cookie = random_token();
        inner.sessions.insert(
            cookie.clone(),
            Session {
                csrf: random_token(),
                last_seen: now,
            },
        );
        Some((cookie, inner.login.clone()))
    }

    /// The session of a cookie value, if it is live (and marks it used).
    pub fn check(&self, cookie: &str) -> Option<SessionInfo> {
        let mut inner = self.lock();
        let now = Instant::now();
        // A map lookup compares keys byte by byte; the cookie is 256 random
        // bits, so timing reveals nothing a guesser can use.
        let session = inner.sessions.get_mut(cookie)?;
        if now.duration_since(session.last_seen) >= SESSION_IDLE {
            inner.sessions.remove(cookie);
            return None;
        }
        session.last_seen = now;
        Some(SessionInfo {
            csrf: session.csrf.clone(),
        })
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.lock().sessions.len()
    }

    fn set_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie_name
        )
    }

    /// The value of this console's cookie in a request, if any.
    fn cookie_of(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value.to_string())
    }
}

/// The value of `name` in a query string (login tokens are hex: no
/// decoding needed), and the query without it.
fn take_param(query: &str, name: &str) -> (Option<String>, String) {
    let mut found = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if k == name => found = Some(v.to_string()),
            _ => rest.push(pair),
        }
    }
    (found, rest.join("&"))
}

/// A refusal page with the security headers (added by the outer layer).
fn refuse(status: StatusCode, title: &str, detail: &str) -> Response {
    (status, views::refusal(title, detail)).into_response()
}

/// The guard in front of every route: Host, login link or cookie, and for
/// posts the origin and the CSRF token.
pub async fn guard(State(console): State<Console>, request: Request, next: Next) -> Response {
    if !console.host_allowed(request.headers()) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "Unexpected host",
            "This console answers only under the address it printed. A request naming \
             another host (a page using DNS rebinding, for example) is refused.",
        );
    }
    let sessions = console.sessions();
    let query = request.uri().query().unwrap_or("").to_string();
    let (token, rest) = take_param(&query, TOKEN_PARAM);
    if let Some(token) = token {
        let Some((cookie, next_token)) = sessions.redeem(&token) else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "This link does not open the console",
                "A login link works once. Use the newest link the console printed in its \
                 terminal (it prints a fresh one each time a link is used).",
            );
        };
        console.announce_link(&next_token);
        let path = request.uri().path();
        let location = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{rest}")
        };
        let mut response = StatusCode::SEE_OTHER.into_response();
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&sessions.set_cookie(&cookie)) {
            headers.insert(header::SET_COOKIE, v);
        }
        return response;
    }
    let Some(session) = sessions
        .cookie_of(request.headers())
        .and_then(|c| sessions.check(&c))
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Open the console with its link",
            "This browser has no session with the console. Open the link the console \
             printed in its terminal.",
        );
    };
    let mut request = request;
    if request.method() == Method::POST {
        if let Err(why) = same_origin(request.headers()) {
            return refuse(StatusCode::FORBIDDEN, "Cross-site request refused", &why);
        }
        request = match check_csrf(request, &session).await {
            Ok(r) => r,
            Err(response) => return response,
        };
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "The console takes GET and form POSTs only.",
        );
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

/// A post must not say it comes from another site: `Sec-Fetch-Site`
/// (sent by current browsers) must be same-origin, and `Origin`, when
/// present, must be this console's own.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Err(format!(
            "The browser says this form was sent from another site (Sec-Fetch-Site: {site}). \
             Actions are taken only from the console's own pages."
        ));
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or("");
        if origin != format!("http://{host}") {
            return Err(format!(
                "The form was sent from {origin}, not from this console (http://{host}). \
                 Actions are taken only from the console's own pages."
            ));
        }
    }
    Ok(())
}

/// Reads the (small) form body, checks its `csrf` field against the
/// session's, and puts the body back for the handler.
async fn check_csrf(request: Request, session: &SessionInfo) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                &format!("A form of the console is at most {MAX_FORM_BYTES} bytes."),
            )
        })?;
    let fields: Vec<(String, String)> = form_pairs(&bytes);
    let token = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !same_token(token, &session.csrf) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "Form refused",
            "The form's CSRF token is missing or wrong: it was not sent from a page of this \
             console session. Open the page again and repeat the action there.",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The pairs of an `application/x-www-form-urlencoded` body.
fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &[u8]| -> String {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    bytes
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(at) => (decode(&pair[..at]), decode(&pair[at + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Adds the security headers to every answer, refusals included.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, "content-security-policy", CONTENT_SECURITY_POLICY);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    // The login token is in the first URL: no page sends it onwards.
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_token_works_once_and_names_its_successor() {
        let sessions = Sessions::new(1);
        let first = sessions.login_token();
        let (cookie, next) = sessions.redeem(&first).expect("first use");
        assert!(sessions.redeem(&first).is_none(), "used twice");
        assert_ne!(first, next);
        assert!(sessions.check(&cookie).is_some());
        assert!(sessions.check("not-a-session").is_none());
        assert!(sessions.redeem(&next).is_some());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(1);
        let mut cookies = Vec::new();
        for _ in 0..MAX_SESSIONS + 3 {
            let (c, _) = sessions.redeem(&sessions.login_token()).expect("login");
            cookies.push(c);
        }
        assert_eq!(sessions.count(), MAX_SESSIONS);
        // The newest are kept.
        assert!(sessions.check(cookies.last().expect("one")).is_some());
    }

    #[test]
    fn form_pairs_decode() {
        assert_eq!(
            form_pairs(b"csrf=ab%20c&reason=a+b&x"),
            vec![
                ("csrf".into(), "ab c".into()),
                ("reason".into(), "a b".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(
            take_param("a=1&token=x&b=2", "token").0.as_deref(),
            Some("x")
        );
        assert_eq!(take_param("a=1&token=x&b=2", "token").1, "a=1&b=2");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}
