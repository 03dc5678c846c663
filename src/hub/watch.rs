//! Watches: what makes other nodes' publications of a channel reach this node (the Redis
//! bridge's SUBSCRIBE). The Hub asks for a watch with a channel's first local subscriber,
//! answers subscribers only once it holds, and drops it after the last one leaves.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{Hub, SubOutcome};
use crate::error::{EngineError, HubError};

/// What other nodes must do for this node's subscribers to see their publications.
pub struct Watcher {
    pub watch: Recipient<Watch>,
    pub unwatch: Recipient<Unwatch>,
}

pub(super) enum WatchState {
    /// Asked; these subscribers wait for the answer before reading the channel's position.
    Pending {
        generation: u64,
        waiters: Vec<oneshot::Sender<Result<(), HubError>>>,
    },
    Ready,
}

/// Start delivering `channel`'s publications from other nodes to this node; answers once that
/// holds (e.g. Redis confirmed the SUBSCRIBE).
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct Watch {
    pub channel: String,
}

/// Stop delivering `channel`'s publications to this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unwatch {
    pub channel: String,
}

/// Installs the watcher; sent once, before any session connects.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseWatcher(pub Watcher);

impl Handler<UseWatcher> for Hub {
    type Result = ();
    fn handle(&mut self, msg: UseWatcher, _: &mut Context<Self>) {
        self.watcher = Some(msg.0);
    }
}

impl Hub {
    /// Answers a subscribe once the watcher delivers the channel's publications to this node
    /// (at once without a watcher, or when the channel is already watched).
    pub(super) fn watch_for(
        &mut self,
        outcome: SubOutcome,
        channel: String,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<SubOutcome, HubError>> {
        let Some(watcher) = &self.watcher else {
            return Box::pin(std::future::ready(Ok(outcome)));
        };
        let (tx, rx) = oneshot::channel();
        match (&outcome, self.watches.get_mut(channel.as_str())) {
            (SubOutcome::UnknownConnection, _) => return Box::pin(std::future::ready(Ok(outcome))),
            // The first subscriber, or one that came after a failed watch while the failed
            // subscribers were still registered: either way nothing delivers the channel yet.
            (SubOutcome::FirstOnNode, _) | (_, None) => {
                self.watch_generation += 1;
                let generation = self.watch_generation;
                let name: Arc<str> = Arc::from(channel.as_str());
                self.watches.insert(
                    Arc::clone(&name),
                    WatchState::Pending {
                        generation,
                        waiters: vec![tx],
                    },
                );
                let request = watcher.watch.send(Watch { channel });
                ctx.spawn(request.into_actor(self).map(move |answer, hub, _| {
                    let result = match answer {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(HubError::from(e)),
                        Err(_) => Err(HubError::unavailable("the node's Redis link is down")),
                    };
                    hub.watched(&name, generation, result);
                }));
            }
            (_, Some(WatchState::Pending { waiters, .. })) => waiters.push(tx),
            (_, Some(WatchState::Ready)) => return Box::pin(std::future::ready(Ok(outcome))),
        }
        Box::pin(async move {
            match rx.await {
                Ok(result) => result.map(|()| outcome),
                // Everyone left the channel while the watch was pending.
                Err(_) => Err(HubError::unavailable(
                    "the subscription was cancelled; retry",
                )),
            }
        })
    }

    /// The channel no longer has a local subscriber: stop receiving its publications.
    pub(super) fn unwatch(&mut self, channel: &str) {
        if let Some(watcher) = &self.watcher {
            self.watches.remove(channel);
            watcher.unwatch.do_send(Unwatch {
                channel: channel.to_owned(),
            });
        }
    }

    /// A watch request was answered: release the subscribers waiting on it. On failure the
    /// channel is left without a watch state; its failed subscribers take their registrations
    /// back, and any subscriber that comes before they have asks for a new watch.
    fn watched(&mut self, channel: &str, generation: u64, result: Result<(), HubError>) {
        let current = matches!(
            self.watches.get(channel),
            Some(WatchState::Pending { generation: g, .. }) if *g == generation
        );
        if !current {
            return;
        }
        let waiters = match self.watches.remove(channel) {
            Some(WatchState::Pending { waiters, .. }) => waiters,
            _ => Vec::new(),
        };
        if result.is_ok() {
            self.watches.insert(Arc::from(channel), WatchState::Ready);
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}
