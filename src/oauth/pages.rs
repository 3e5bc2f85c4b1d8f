//! The browser-facing HTML of /authorize: login, consent and error pages. Plain,
//! accessible HTML with a small inline stylesheet and no external assets. Every dynamic
//! string goes through [`escape`].

use http::{HeaderValue, Response, StatusCode, header};

use crate::http::{Body, html};

/// HTML-escape text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}\
main{max-width:24rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px rgba(0,0,0,.12)}\
h1{font-size:1.35rem;margin:0 0 1rem}label{display:block;margin:.8rem 0 .3rem;font-weight:600}\
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #9aa3b2;border-radius:4px;font-size:1rem}\
button{margin-top:1.2rem;padding:.6rem 1.1rem;font-size:1rem;border-radius:4px;border:1px solid #1f4fd1;background:#1f4fd1;color:#fff;cursor:pointer}\
button.secondary{background:#fff;color:#1f4fd1;margin-left:.5rem}\
.error{background:#fdecea;color:#8a1c12;border:1px solid #f5c2bd;padding:.6rem;border-radius:4px}\
ul{padding-left:1.2rem}.muted{color:#5b6475;font-size:.9rem}";

fn page(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        title = escape(title)
    );
    let mut resp = html(status, doc);
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    resp
}

/// Hidden inputs carrying the authorization request through a form post.
fn hidden(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(k), escape(v)))
        .collect()
}

pub fn login(action: &str, client_name: &str, fields: &[(&str, &str)], error: Option<&str>) -> Response<Body> {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1><p class=\"muted\">to continue to <strong>{client}</strong></p>{error}\
<form method=\"post\" action=\"{action}\">{hidden}<input type=\"hidden\" name=\"action\" value=\"login\">\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form>",
        client = escape(client_name),
        action = escape(action),
        hidden = hidden(fields),
    );
    page(if error.is_empty() { StatusCode::OK } else { StatusCode::UNAUTHORIZED }, "Sign in", &body)
}

pub fn consent(
    action: &str,
    client_name: &str,
    user: &str,
    scopes: &[String],
    fields: &[(&str, &str)],
) -> Response<Body> {
    let items: String = if scopes.is_empty() {
        "<li>basic access (no scopes)</li>".to_string()
    } else {
        scopes.iter().map(|s| format!("<li><code>{}</code></li>", escape(s))).collect()
    };
    let body = format!(
        "<h1>Allow access?</h1><p><strong>{client}</strong> asks to act as <strong>{user}</strong> with these permissions:</p>\
<ul>{items}</ul><form method=\"post\" action=\"{action}\">{hidden}<input type=\"hidden\" name=\"action\" value=\"consent\">\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\" class=\"secondary\">Deny</button></form>",
        client = escape(client_name),
        user = escape(user),
        action = escape(action),
        hidden = hidden(fields),
    );
    page(StatusCode::OK, "Allow access?", &body)
}

/// A request we cannot redirect back (unknown client, unregistered redirect URI, ...).
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!(
        "<h1>This sign-in request cannot be completed</h1><p class=\"error\" role=\"alert\">{}</p>\
<p class=\"muted\">Return to the application you came from and try again.</p>",
        escape(message)
    );
    page(status, "Sign-in error", &body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(super::escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
