//! The page's files. The page is built into the binary (rust-embed), so a copied or
//! `cargo install`ed binary runs from any folder. With `public_dir` set, files come from disk
//! instead, served by hyper-staticfile (MIME types, Last-Modified, ranges), and this module
//! adds the rules that keep every request inside that folder.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_staticfile::vfs::{FileOpener, FileWithMetadata};
use hyper_staticfile::{ResolveResult, Resolver, ResponseBuilder};
use tracing::warn;

use super::response::{Body, empty, full, not_found, text};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `reason` is part of the message, not a `source`, so a chain prints it once.
    #[error(
        "the public_dir {path} cannot be opened: {reason} (fix public_dir in {file}, or remove \
         it to serve the page built into the binary)"
    )]
    PublicDir {
        path: PathBuf,
        reason: io::Error,
        file: String,
    },
}

/// The page's files as built into the binary from the repository's `public/`.
///
/// rust-embed: widely used and maintained, it embeds with `include_bytes!` (so cargo rebuilds
/// when a file changes) and records each file's SHA-256 and modification time at build time,
/// which give the ETag and Last-Modified. `debug-embed` makes debug builds embed too, so the
/// tests run the same page a release serves.
#[derive(rust_embed::Embed)]
#[folder = "public/"]
struct BuiltInPage;

/// Where the page's files come from.
pub enum Files {
    BuiltIn,
    Disk(Resolver<PublicDir>),
}

/// Checks `public_dir` (when set) and returns the folder to serve, canonical; `None` serves
/// the built-in page.
pub fn public_root(config: &Config) -> Result<Option<PathBuf>, AppError> {
    let Some(dir) = &config.public_dir else {
        return Ok(None);
    };
    dir.canonicalize()
        .and_then(|root| {
            if root.is_dir() {
                Ok(root)
            } else {
                Err(io::Error::other("it is not a directory"))
            }
        })
        .map(Some)
        .map_err(|reason| AppError::PublicDir {
            path: dir.clone(),
            reason,
            file: config.file_name(),
        })
}

impl Files {
    /// What `public_dir` asks for: the built-in page, or the folder on disk.
    pub fn from_config(config: &Config) -> Result<Files, AppError> {
        Ok(match public_root(config)? {
            None => Files::BuiltIn,
            Some(root) => Files::Disk(Resolver::with_opener(PublicDir { root })),
        })
    }

    /// One file of the page, or 404.
    pub async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        if leaves_root(req.uri().path()) {
            return not_found();
        }
        let files = match self {
            Files::BuiltIn => return built_in_file(&req),
            Files::Disk(files) => files,
        };
        let resolved = match files.resolve_request(&req).await {
            Ok(resolved) => resolved,
            Err(err) => {
                warn!("cannot serve {}: {err}", req.uri().path());
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
            }
        };
        if matches!(
            resolved,
            ResolveResult::NotFound | ResolveResult::PermissionDenied
        ) {
            return not_found();
        }
        match ResponseBuilder::new().request(&req).build(resolved) {
            Ok(mut response) => {
                // Revalidate every time (cheap: If-Modified-Since answers 304), so a new page
                // is seen after an upgrade.
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response.map(BodyExt::boxed_unsync)
            }
            Err(err) => {
                warn!("cannot build a response for {}: {err}", req.uri().path());
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot build response\n")
            }
        }
    }
}

/// One file of the built-in page, with the same caching rules as files from disk:
/// revalidated each time, and answered 304 when the ETag or the date still matches.
fn built_in_file<B>(req: &Request<B>) -> Response<Body> {
    let path = req.uri().path().trim_start_matches('/');
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.into_owned()
    };
    let Some(file) = BuiltInPage::get(&path) else {
        return not_found();
    };
    let hash = file.metadata.sha256_hash();
    let mime = file.metadata.mimetype();
    let etag = format!(
        "\"{}\"",
        hash[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let modified = file
        .metadata
        .last_modified()
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let headers = req.headers();
    let unchanged = match headers.get(header::IF_NONE_MATCH) {
        Some(tags) => tags.to_str().is_ok_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == "*" || tag.trim().trim_start_matches("W/") == etag)
        }),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|since| httpdate::parse_http_date(since.to_str().ok()?).ok())
            .zip(modified)
            .is_some_and(|(since, modified)| modified <= since),
    };
    let mut response = if unchanged {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let length = file.data.len();
        let body = match (req.method(), file.data) {
            (&Method::HEAD, _) => empty(),
            (_, std::borrow::Cow::Borrowed(bytes)) => full(Bytes::from_static(bytes)),
            (_, std::borrow::Cow::Owned(bytes)) => full(Bytes::from(bytes)),
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        if let Ok(mime) = HeaderValue::from_str(mime) {
            headers.insert(header::CONTENT_TYPE, mime);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        response
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(modified) = modified
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(modified))
    {
        headers.insert(header::LAST_MODIFIED, date);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A request path that tries to climb out of `public/`: a `..` segment (also percent-encoded),
/// a backslash, or a NUL. hyper-staticfile would fold these into harmless paths; refusing them
/// outright makes the rule plain.
fn leaves_root(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.contains('\\') || decoded.contains('\0') || decoded.split('/').any(|s| s == "..")
}

/// Opens files under a canonical root, refusing anything whose real path (symlinks
/// resolved) lies outside it, so a symlink in `public/` cannot expose the rest of the disk.
pub struct PublicDir {
    root: PathBuf,
}

impl FileOpener for PublicDir {
    type File = tokio::fs::File;
    type Future =
        Pin<Box<dyn Future<Output = io::Result<FileWithMetadata<tokio::fs::File>>> + Send>>;

    fn open(&self, path: &Path) -> Self::Future {
        let root = self.root.clone();
        let wanted = root.join(path);
        Box::pin(async move {
            let opened = tokio::task::spawn_blocking(move || {
                let real = wanted.canonicalize()?;
                if !real.starts_with(&root) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "path leads outside the public directory",
                    ));
                }
                let file = std::fs::File::open(&real)?;
                let metadata = file.metadata()?;
                Ok(FileWithMetadata {
                    handle: tokio::fs::File::from_std(file),
                    size: metadata.len(),
                    modified: metadata.modified().ok(),
                    is_dir: metadata.is_dir(),
                })
            })
            .await;
            opened.unwrap_or_else(|join| Err(io::Error::other(join)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_paths_are_recognised() {
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/%2e%2e/x",
            "/a/../../x",
            "/..%2fx",
            "/%5c..%5cx",
            "/a\\b",
            "/x%00.html",
        ] {
            assert!(leaves_root(bad), "{bad}");
        }
        for good in ["/", "/index.html", "/app.js", "/a..b", "/.well-known/x"] {
            assert!(!leaves_root(good), "{good}");
        }
    }
}
