//! The end of both stacks: the sidecar's own app. A request for it passes the health gate
//! (`--enable-app-health-check`), then waits for a slot (`--app-max-concurrency`), then goes
//! over the app channel. Peers' requests come here from the callee's stack; the app's calls to
//! its own app ID from the caller's.

use std::{sync::Arc, task::Poll};

use http::Response;
use tokio::sync::Semaphore;
use tower::Service;

use crate::{
    apphealth::AppHealth,
    body::{self, Body, find_too_large},
    invoke::{Cause, Invocation, error::chain, headers},
    stacks::{Answer, Step},
    upstream::AppChannel,
};

/// What an app is delivered: the invocation, its body as it is.
pub type Delivery = Invocation<Body>;

/// The app as this sidecar calls it: health gate, concurrency limit, channel.
pub type App = HealthGate<Limit<Channel>>;

/// Builds [`App`].
pub fn app(
    channel: AppChannel,
    health: Option<Arc<AppHealth>>,
    max_concurrency: Option<u32>,
) -> App {
    HealthGate::new(health, Limit::new(max_concurrency, Channel::new(channel)))
}

// === the app channel ===

/// Sends a [`Delivery`] to the app and frames its answer for the caller.
#[derive(Debug, Clone)]
pub struct Channel {
    app: AppChannel,
}

impl Channel {
    pub fn new(app: AppChannel) -> Self {
        Self { app }
    }
}

impl Service<Delivery> for Channel {
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, d: Delivery) -> Answer {
        let url = d.url(&self.app.base);
        let app = self.app.clone();
        Box::pin(async move {
            let head = d.is_head();
            let verb = d.verb.clone();
            match app.send(d.into_request(&url)?).await {
                Ok(resp) => {
                    let mut resp = body::frame_upstream(resp, head).await;
                    headers::from_app(resp.headers_mut());
                    Ok(resp)
                }
                Err(e) => {
                    if let Some(limit) = find_too_large(&*e) {
                        return Err(Cause::BodyTooLarge { limit });
                    }
                    Err(Cause::AppChannel(format!("{verb} {url}: {}", chain(&*e))))
                }
            }
        })
    }
}

// === the concurrency limit ===

/// `--app-max-concurrency`: one slot per request being delivered to the app, held until its
/// response body has been read (the app is busy while it sends it). Others queue, with no 429
/// (as in Dapr); waiting is cancelled with the request: when the caller goes away the future
/// is dropped, and its place in the queue with it.
#[derive(Debug, Clone)]
pub struct Limit<S> {
    slots: Option<Arc<Semaphore>>,
    inner: S,
}

impl<S> Limit<S> {
    /// `None`: no limit.
    pub fn new(max: Option<u32>, inner: S) -> Self {
        Self {
            slots: max.map(|n| Arc::new(Semaphore::new(n as usize))),
            inner,
        }
    }
}

impl<S> Service<Delivery> for Limit<S>
where
    S: Step<Delivery> + Clone + Send + 'static,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, d: Delivery) -> Answer {
        let Some(slots) = self.slots.clone() else {
            return self.inner.call(d);
        };
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let slot = slots
                .acquire_owned()
                .await
                .expect("the app's semaphore is never closed");
            let resp = inner.call(d).await?;
            Ok(resp.map(|b| body::holding(b, slot)))
        })
    }
}

// === the health gate ===

/// `--enable-app-health-check`: requests for the app are refused while it is unhealthy.
#[derive(Debug, Clone)]
pub struct HealthGate<S> {
    health: Option<Arc<AppHealth>>,
    inner: S,
}

impl<S> HealthGate<S> {
    pub fn new(health: Option<Arc<AppHealth>>, inner: S) -> Self {
        Self { health, inner }
    }
}

impl<S> Service<Delivery> for HealthGate<S>
where
    S: Step<Delivery>,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, d: Delivery) -> Answer {
        if let Some(h) = &self.health
            && !h.is_healthy()
        {
            return Box::pin(std::future::ready(Err(Cause::AppUnhealthy)));
        }
        self.inner.call(d)
    }
}

// === the callee's end ===

/// The callee stack's last step: the app, or why there is none.
#[derive(Debug, Clone)]
pub struct Deliver {
    app: Option<App>,
}

impl Deliver {
    pub fn new(app: Option<App>) -> Self {
        Self { app }
    }
}

impl Service<Delivery> for Deliver {
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, d: Delivery) -> Answer {
        match &mut self.app {
            Some(app) => app.call(d),
            None => Box::pin(std::future::ready(Err(Cause::NoAppChannel))),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The app's gates (`--app-max-concurrency`, `--enable-app-health-check`) against an app
    //! on loopback whose response bodies the test feeds by hand.

    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, Request};
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Frame, Incoming};
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        config::AppHealthSettings,
        invoke::{InvokeError, Method},
    };

    /// Each request's path, with the sender that feeds its response body.
    type Arrival = (String, mpsc::Sender<Bytes>);

    async fn gated_app() -> (u16, mpsc::UnboundedReceiver<Arrival>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (arrivals, rx) = mpsc::unbounded_channel::<Arrival>();
        tokio::spawn(async move {
            loop {
                let (stream, _) = l.accept().await.unwrap();
                let arrivals = arrivals.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (tx, rx) = mpsc::channel::<Bytes>(1);
                        let _ = arrivals.send((req.uri().path().to_owned(), tx));
                        let body = StreamBody::new(futures_util::stream::unfold(
                            rx,
                            |mut rx| async move {
                                rx.recv().await.map(|b| {
                                    (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx)
                                })
                            },
                        ));
                        async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (port, rx)
    }

    fn sidecar(
        app_port: u16,
        max_concurrency: Option<u32>,
        app_health: Option<Arc<AppHealth>>,
    ) -> App {
        app(
            AppChannel::new(crate::config::AppProtocol::Http, "127.0.0.1", app_port),
            app_health,
            max_concurrency,
        )
    }

    async fn deliver(sc: &App, path: &str) -> Result<Response<Body>, Cause> {
        let method = Method::normalize(path.as_bytes()).unwrap();
        sc.clone()
            .call(Delivery {
                verb: http::Method::GET,
                method,
                query: None,
                headers: HeaderMap::new(),
                body: body::empty(),
                caller: None,
            })
            .await
    }

    #[tokio::test]
    async fn a_slot_is_held_until_the_body_is_read_and_waiters_can_give_up() {
        let (port, mut arrivals) = gated_app().await;
        let sc = sidecar(port, Some(1), None);

        // 1 gets the only slot; its body stays open.
        let first = deliver(&sc, "one").await.unwrap();
        let (path, feed_one) = arrivals.recv().await.unwrap();
        assert_eq!(path, "/one");

        // 2 queues (no 429) and is never sent while 1's body is open.
        let mut second = Box::pin(deliver(&sc, "two"));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut second)
                .await
                .is_err(),
            "the second request must wait for the slot"
        );
        assert!(arrivals.try_recv().is_err(), "the app must not see it yet");
        // The caller gives up: its place in the queue goes with it.
        drop(second);

        // 1's body ends: the slot is free for 3, and 2 was never sent.
        feed_one.send(Bytes::from_static(b"done")).await.unwrap();
        drop(feed_one);
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "done");
        let third = tokio::time::timeout(Duration::from_secs(10), deliver(&sc, "three"))
            .await
            .expect("the slot was released")
            .unwrap();
        let (path, feed_three) = arrivals.recv().await.unwrap();
        assert_eq!(
            path, "/three",
            "the cancelled request never reached the app"
        );

        // A dropped (unread) body frees the slot too.
        drop(third);
        drop(feed_three);
        let _fourth = tokio::time::timeout(Duration::from_secs(10), deliver(&sc, "four"))
            .await
            .expect("dropping the body released the slot")
            .unwrap();
        assert_eq!(arrivals.recv().await.unwrap().0, "/four");
    }

    #[tokio::test]
    async fn without_a_limit_requests_do_not_wait() {
        let (port, mut arrivals) = gated_app().await;
        let sc = sidecar(port, None, None);
        let _one = deliver(&sc, "one").await.unwrap();
        let _two = tokio::time::timeout(Duration::from_secs(10), deliver(&sc, "two"))
            .await
            .expect("no limit: the second request goes at once")
            .unwrap();
        assert_eq!(arrivals.recv().await.unwrap().0, "/one");
        assert_eq!(arrivals.recv().await.unwrap().0, "/two");
    }

    #[tokio::test]
    async fn an_unhealthy_app_is_not_called() {
        let (port, mut arrivals) = gated_app().await;
        let health = Arc::new(AppHealth::new(AppHealthSettings {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            threshold: 1,
        }));
        let sc = sidecar(port, Some(1), Some(health.clone()));
        // Unhealthy until a probe succeeds (as in Dapr).
        let err = deliver(&sc, "early").await.unwrap_err();
        assert!(matches!(err, Cause::AppUnhealthy), "{err:?}");
        assert!(
            InvokeError::new("cart", err)
                .message()
                .contains("app is not in a healthy state")
        );
        health.report(true);
        let _ok = deliver(&sc, "now").await.unwrap();
        assert_eq!(
            arrivals.recv().await.unwrap().0,
            "/now",
            "only the healthy call arrived"
        );
        health.report(false);
        assert!(matches!(
            deliver(&sc, "again").await.unwrap_err(),
            Cause::AppUnhealthy
        ));
        assert!(arrivals.try_recv().is_err());
    }
}
