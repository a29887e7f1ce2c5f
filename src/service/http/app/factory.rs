//! The application as the embedding program hands it over: a factory, called in each worker
//! after the fork, that builds a type-erased [`App`].
//!
//! The factory, not the app, crosses the fork: the arbiter never runs application code, and
//! whatever the app opens (a database pool, a runtime handle, a file) is opened in the worker
//! that uses it. The factory may be async and may fail; a failure is the worker's boot error.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Body;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use super::{AppRequest, BoxApp, BoxError};

/// An application, type-erased: any cloneable `tower::Service` taking [`AppRequest`]s (an
/// axum `Router` is one).
#[derive(Clone)]
pub struct App(pub(super) BoxApp);

impl App {
    /// Erases the type of `service`. Its errors become 500s; its body is boxed.
    pub fn new<S, B>(service: S) -> App
    where
        S: tower::Service<AppRequest, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let service = service
            .map_response(|r: Response<B>| r.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(Into::into);
        App(BoxCloneSyncService::new(service))
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("App")
    }
}

type BuildFuture = Pin<Box<dyn Future<Output = Result<App, BoxError>>>>;

/// Builds the application, once per worker, after the fork. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct AppFactory(Arc<dyn Fn() -> BuildFuture + Send + Sync>);

impl AppFactory {
    /// Wraps `build`, an async closure returning the app or an error.
    ///
    /// The future need not be `Send`: it runs on the worker's own single-threaded runtime.
    /// ```
    /// # use oxicorn::service::http::app::AppFactory;
    /// let factory = AppFactory::new(|| async {
    ///     Ok::<_, std::io::Error>(tower::service_fn(|_req| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
    ///     }))
    /// });
    /// # drop(factory);
    /// ```
    pub fn new<F, Fut, S, B, E>(build: F) -> AppFactory
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + 'static,
        E: Into<BoxError>,
        S: tower::Service<AppRequest, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        AppFactory(Arc::new(move || {
            let fut = build();
            Box::pin(async move { fut.await.map(App::new).map_err(Into::into) })
        }))
    }

    /// Runs the factory.
    ///
    /// # Errors
    /// What the factory returned; log it with [`error_chain`].
    pub async fn build(&self) -> Result<App, BoxError> {
        (self.0)().await
    }
}

impl fmt::Debug for AppFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppFactory")
    }
}

/// The factory of this program, registered once by [`crate::server::Server::run`] in the
/// arbiter before any fork, so every worker inherits it (fork copies the memory; the arbiter
/// never calls it). A process-wide slot rather than a value threaded through the arbiter:
/// the arbiter stays free of application types.
static REGISTERED: OnceLock<AppFactory> = OnceLock::new();

/// Registers the program's factory; a second call is refused (one app per program).
///
/// # Errors
/// The factory given, when one was registered already.
pub fn register(factory: AppFactory) -> Result<(), AppFactory> {
    REGISTERED.set(factory)
}

/// The registered factory, if any.
pub fn registered() -> Option<&'static AppFactory> {
    REGISTERED.get()
}

/// `err` and its sources, joined with `: ` (as anyhow's `{:#}`), for a log line.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to the database")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_failing_factory_reports_its_cause_chain() {
        let factory = AppFactory::new(|| async {
            Err::<
                tower::util::ServiceFn<
                    fn(AppRequest) -> std::future::Ready<Result<Response<String>, BoxError>>,
                >,
                _,
            >(Outer(std::io::Error::other("connection refused")))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(factory.build()).unwrap_err();
        assert_eq!(
            error_chain(&*err),
            "cannot connect to the database: connection refused"
        );
    }
}
