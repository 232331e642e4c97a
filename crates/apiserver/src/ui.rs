//! The dashboard's static files at `/ui/`, embedded at compile time from the
//! committed build output `ui/dist` (so building tessera needs no npm;
//! `scripts/build-ui.sh` rebuilds it).
//!
//! These routes sit outside authentication and authorization on purpose: the
//! files are public and identical for everyone, and every piece of data the
//! page shows comes from the API with the user's own credentials. They
//! cannot reach anything else: a request is answered only when its raw path
//! equals one of the few embedded files' (no decoding, no file system, so no
//! traversal), with the file's own content type, `nosniff`, and a
//! Content-Security-Policy that allows scripts, styles and API calls from
//! this origin only (no inline script, no framing).

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

/// Where the dashboard is served.
pub const PREFIX: &str = "/ui/";

/// The page's policy: everything from this origin, nothing inline, no frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

macro_rules! dist {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ui/dist/", $file))
    };
}

/// The embedded files: request path, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("/ui/", "text/html; charset=utf-8", dist!("index.html")),
    ("/ui/assets/app.js", "text/javascript; charset=utf-8", dist!("assets/app.js")),
    ("/ui/assets/app.css", "text/css; charset=utf-8", dist!("assets/app.css")),
];

/// The hash of the sources `ui/dist` was built from (see `scripts/build-ui.sh`).
pub const SOURCES_HASH: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ui/dist/SOURCES.sha256"));

/// The `/ui` routes, without state or auth layers.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/ui", get(redirect)).route("/ui/", get(serve)).route("/ui/{*rest}", get(serve))
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // File names carry no content hash: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/ui` → `/ui/`, so the page's relative URLs resolve under the prefix.
async fn redirect() -> Response {
    with_security_headers((StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, PREFIX)]).into_response())
}

async fn serve(request: Request) -> Response {
    // The raw path, exactly: `%2e%2e`, `//` or `..` never equal a listed path.
    let path = request.uri().path();
    let response = match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, bytes)) => ([(header::CONTENT_TYPE, *content_type)], Body::from(*bytes)).into_response(),
        None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "404 page not found\n").into_response(),
    };
    with_security_headers(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn get(method: &str, path: &str) -> Response {
        let request = http::Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        routes::<()>().oneshot(request).await.unwrap()
    }

    fn header<'a>(r: &'a Response, name: &str) -> &'a str {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    #[tokio::test]
    async fn files_are_served_with_their_types_and_the_security_headers() {
        for (path, content_type) in
            [("/ui/", "text/html; charset=utf-8"), ("/ui/assets/app.js", "text/javascript; charset=utf-8"), ("/ui/assets/app.css", "text/css; charset=utf-8")]
        {
            let r = get("GET", path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&r, "content-type"), content_type, "{path}");
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            assert_eq!(header(&r, "content-security-policy"), CONTENT_SECURITY_POLICY);
        }
        let r = get("GET", "/ui").await;
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(header(&r, "location"), "/ui/");
    }

    #[tokio::test]
    async fn nothing_but_the_listed_files_is_reachable() {
        for path in [
            "/ui/../api/v1/secrets",
            "/ui/assets/../../api/v1/secrets",
            "/ui/%2e%2e/api/v1/secrets",
            "/ui/assets%2fapp.js",
            "/ui//assets/app.js",
            "/ui/index.html/",
            "/ui/SOURCES.sha256",
            "/ui/assets/",
        ] {
            let r = get("GET", path).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8", "{path}");
            assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        }
        let r = get("POST", "/ui/").await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let (_, _, index) = FILES[0];
        let html = std::str::from_utf8(index).unwrap();
        // Every <script> loads a file; the CSP would block an inline one anyway.
        for tag in html.split("<script").skip(1) {
            let open = tag.split('>').next().unwrap_or_default();
            assert!(open.contains("src=\"/ui/assets/"), "inline or foreign script: <script{open}>");
        }
        assert!(!html.contains("<style"), "inline style in index.html");
        assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
    }

    /// `ui/dist` must be the build of the committed sources: the hash
    /// `scripts/build-ui.sh` recorded must equal the sources' hash now.
    #[test]
    fn committed_build_output_matches_the_sources() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let now = sources_hash(&root);
        assert_eq!(SOURCES_HASH.trim(), now, "ui/dist is stale: run scripts/build-ui.sh and commit ui/dist");
    }

    /// `LC_ALL=C sort` of `sha256sum` lines of the sources, hashed again, as
    /// `scripts/build-ui.sh` computes it.
    fn sources_hash(root: &std::path::Path) -> String {
        let mut files = Vec::new();
        for entry in ["ui/index.html", "ui/package.json", "ui/package-lock.json", "ui/tsconfig.json", "ui/vite.config.ts"] {
            files.push(entry.to_owned());
        }
        collect(root, "ui/src", &mut files);
        files.sort();
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut listing = String::new();
        for f in &files {
            let content = std::fs::read(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            listing.push_str(&format!("{}  {f}\n", hex(ring::digest::digest(&ring::digest::SHA256, &content).as_ref())));
        }
        hex(ring::digest::digest(&ring::digest::SHA256, listing.as_bytes()).as_ref())
    }

    fn collect(root: &std::path::Path, dir: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let entry = entry.unwrap();
            let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                collect(root, &rel, out);
            } else {
                out.push(rel);
            }
        }
    }
}
