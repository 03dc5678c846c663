//! The demo page and its assets from `HUB_STATIC_DIR`: GET and HEAD only, no hidden files, no
//! way out of the directory, and the contract's JSON 404 for anything else. Files are readable
//! by the allowed origins (CORS), so a page on a development server can import
//! `/hub-client.js`.

use std::path::{Path, PathBuf};

use actix_files::NamedFile;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{allow_origin, cors_origin, not_found};
use crate::app::AppState;

pub async fn serve(req: HttpRequest, app: web::Data<AppState>) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return not_found(req).await;
    }
    let Some(path) = resolve(&app.config.static_dir, req.path()) else {
        return not_found(req).await;
    };
    // Small files on a local disk: opening them inline is cheaper than a blocking-pool hop.
    match NamedFile::open(&path) {
        Ok(file) => {
            let mut res = file.into_response(&req);
            allow_origin(res.headers_mut(), cors_origin(&req, &app));
            res
        }
        Err(_) => not_found(req).await,
    }
}

/// The file a request path names inside `root`, if it is a plain, visible file there.
fn resolve(root: &Path, raw_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .ok()?;
    let mut path = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        // Dot segments (and hidden files) and separators of other systems never resolve.
        if segment.starts_with('.') || segment.contains('\\') || segment.contains('\0') {
            return None;
        }
        path.push(segment);
    }
    if path.is_dir() {
        path.push("index.html");
    }
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn paths_stay_inside_the_directory() {
        let root = std::env::temp_dir().join(format!("hub-static-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a")).expect("dir");
        std::fs::write(root.join("index.html"), "x").expect("file");
        std::fs::write(root.join("a/b.js"), "x").expect("file");
        std::fs::write(root.join(".env"), "secret").expect("file");
        assert_eq!(resolve(&root, "/"), Some(root.join("index.html")));
        assert_eq!(resolve(&root, "/a/b.js"), Some(root.join("a/b.js")));
        assert_eq!(resolve(&root, "/a%2Fb.js"), Some(root.join("a/b.js")));
        assert_eq!(resolve(&root, "/.env"), None);
        assert_eq!(resolve(&root, "/a/../../etc/passwd"), None);
        assert_eq!(resolve(&root, "/%2e%2e/x"), None);
        assert_eq!(resolve(&root, "/missing"), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
