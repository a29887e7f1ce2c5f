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
use hyper::body::Body;

use super::{AppRequest, AppService, BoxError, ServeFuture};
use crate::net::Stream;
use crate::service::ConnContext;

/// What oxicorn serves as an application: a cloneable `tower::Service` taking
/// [`AppRequest`]s, whose future can move between the worker's tasks (`Send`), whose error
/// boxes (an error becomes a 500) and whose response body is an [`AppBody`]. An axum `Router`
/// is one (`Router<()>`, its state given with `with_state`).
///
/// Implemented for every such type: a name for these bounds, never a trait to implement.
pub trait Application<B: AppBody>:
    tower::Service<
        AppRequest,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> Application<B> for S
where
    B: AppBody,
    S: tower::Service<
            AppRequest,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
{
}

/// What oxicorn sends as an application's response body: an `http_body::Body` of `Bytes`
/// chunks whose error boxes (an error ends the response: HTTP/1 closes the connection,
/// HTTP/2 resets the stream). axum's `Body` is one, and so are `String`, `Full<Bytes>` and
/// `Empty<Bytes>`.
///
/// Implemented for every such type: a name for these bounds, never a trait to implement.
pub trait AppBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> AppBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// An application, type-erased: any cloneable `tower::Service` taking [`AppRequest`]s (an
/// axum `Router` is one).
///
/// The type is erased per connection, not per request: a connection is served by code made
/// for the app's own service, future and body types, as `axum::serve` serves its `Router`, so
/// a request costs no boxed clone of the service, no boxed future and no boxed body on top of
/// the app's own: 17 allocations per hello-world request instead of 22 behind a
/// `BoxCloneSyncService` (malloc counted with a uprobe, 2026-11-30).
#[derive(Clone)]
pub struct App(pub(super) Arc<dyn ServeConn>);

/// Serves connections with one app type (implemented by [`Typed`] only).
pub(super) trait ServeConn: Send + Sync + 'static {
    /// Serves one connection of `service` (this app's settings and log) to its end.
    fn serve<'a>(
        &'a self,
        service: &'a AppService,
        stream: Stream,
        ctx: ConnContext,
    ) -> ServeFuture<'a>;
}

/// An app of type `S` answering with bodies of type `B`.
struct Typed<S, B> {
    service: S,
    body: std::marker::PhantomData<fn() -> B>,
}

impl<S, B> ServeConn for Typed<S, B>
where
    S: Application<B>,
    B: AppBody,
{
    fn serve<'a>(
        &'a self,
        service: &'a AppService,
        stream: Stream,
        ctx: ConnContext,
    ) -> ServeFuture<'a> {
        Box::pin(super::serve_typed(
            service,
            self.service.clone(),
            stream,
            ctx,
        ))
    }
}

impl App {
    /// Erases the type of `service`. Its errors become 500s.
    pub fn new<S, B>(service: S) -> App
    where
        S: Application<B>,
        B: AppBody,
    {
        App(Arc::new(Typed {
            service,
            body: std::marker::PhantomData,
        }))
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
        S: Application<B>,
        B: AppBody,
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
