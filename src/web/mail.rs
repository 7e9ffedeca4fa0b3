//! The web page's own emails: a signed link to a registry contact, queued
//! in the outbox. The page answers at once, the same way whether or not a
//! mail was queued, and serve's worker sends it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};

use super::pages::WebError;
use super::{WebState, guard};
use crate::email::EmailAddress;
pub use crate::messages::LinkEmail;
use crate::registry::{AskedAs, DAY_MS, MessageKind, now_ms};
use crate::user_id::UserId;

/// Links of some purposes mailed per hour, whoever asks: past the budget, a
/// request mails nothing (its page answers as always), so a flood neither
/// fills the outbox ahead of the other mail nor spends the relay's quota.
/// Once half of it is spent, each network gets a share of it, so that one
/// client with many addresses cannot spend it all and leave everyone
/// else's links unmailed.
pub struct HourlyBudget {
    /// The setting that sets it, named in the log.
    setting: &'static str,
    purposes: &'static [&'static str],
    /// When the log last said it was spent, or that a network had its
    /// share: once in ten minutes each, so that a flood of requests does
    /// not flood the log too.
    last_warned: AtomicI64,
    network_last_warned: AtomicI64,
}

/// Once half an hour's budget is spent, one network (an IPv4 /24, an IPv6
/// /48) may have had a tenth of it mailed at its requests, and at least
/// [`MIN_NETWORK_SHARE`]: whoever would spend it all then needs several
/// networks, not one host's IPv6 addresses. Before that, a busy network (an
/// office, a campus behind one address) is not held back.
const NETWORK_SHARE: u32 = 10;
const MIN_NETWORK_SHARE: u32 = 10;

/// How many links of a budget of `per_hour` one network may have mailed
/// an hour.
fn network_share(per_hour: u32) -> u32 {
    (per_hour / NETWORK_SHARE).max(MIN_NETWORK_SHARE)
}

impl HourlyBudget {
    pub const fn new(setting: &'static str, purposes: &'static [&'static str]) -> HourlyBudget {
        HourlyBudget {
            setting,
            purposes,
            last_warned: AtomicI64::new(i64::MIN),
            network_last_warned: AtomicI64::new(i64::MIN),
        }
    }

    /// Counts one link about to be mailed at the request of a client at
    /// `ip`; `false` (mail nothing) while half of `per_hour` is spent and
    /// its network already had its share within the hour. Asked last, just
    /// before the link is made, so that requests that mail nothing anyway
    /// do not count.
    pub async fn network_share_left(
        &self,
        state: &WebState,
        per_hour: u32,
        ip: Option<IpAddr>,
    ) -> Result<bool, WebError> {
        let (key, network) = self.network_counter(ip);
        if state.inner.mailed_by_network.hit(key, None, network_share(per_hour))
            || !self.half_spent(state, per_hour).await?
        {
            return Ok(true);
        }
        self.tell_network_had_its_share(&network);
        Ok(false)
    }

    /// Whether [`Self::network_share_left`] would say no now, counting
    /// nothing: asked before Synapse is, so that the requests of a network
    /// that had its share cost Synapse nothing.
    pub async fn network_had_its_share(
        &self,
        state: &WebState,
        per_hour: u32,
        ip: Option<IpAddr>,
    ) -> Result<bool, WebError> {
        let (key, network) = self.network_counter(ip);
        let had = state.inner.mailed_by_network.reached(&key, network_share(per_hour))
            && self.half_spent(state, per_hour).await?;
        if had {
            self.tell_network_had_its_share(&network);
        }
        Ok(had)
    }

    fn tell_network_had_its_share(&self, network: &str) {
        warn_at_most_every_ten_minutes(&self.network_last_warned, || {
            tracing::warn!(
                network = network.trim_start_matches("net:"),
                "half of {} is spent, and one network had its share: its requests mail nothing for now",
                self.setting
            );
        });
    }

    /// The key counting what `ip`'s network had mailed of this budget, and
    /// the network.
    fn network_counter(&self, ip: Option<IpAddr>) -> (String, String) {
        let network = ip.map_or_else(|| "net:unknown".to_owned(), guard::network_key);
        (format!("{}:{network}", self.setting), network)
    }

    /// Have half of `per_hour` links of its purposes been made in the last
    /// hour? From then on a network's share holds.
    async fn half_spent(&self, state: &WebState, per_hour: u32) -> Result<bool, WebError> {
        Ok(2 * self.made_this_hour(state).await? >= i64::from(per_hour))
    }

    /// Have `per_hour` links of its purposes been made in the last hour?
    pub async fn spent(&self, state: &WebState, per_hour: u32) -> Result<bool, WebError> {
        let spent = self.made_this_hour(state).await? >= i64::from(per_hour);
        if spent {
            warn_at_most_every_ten_minutes(&self.last_warned, || {
                tracing::warn!("{} reached: requests mail nothing for now", self.setting);
            });
        }
        Ok(spent)
    }

    /// Links of its purposes made in the last hour.
    async fn made_this_hour(&self, state: &WebState) -> Result<i64, WebError> {
        let hour_ago = now_ms() - 3600 * 1000;
        let mut made = 0;
        for purpose in self.purposes {
            made += state.registry.web_links_made_since(purpose, hour_ago).await?;
        }
        Ok(made)
    }
}

/// Links one address may be mailed in a day, of the purposes of one form:
/// whoever keeps typing someone else's address (or ID) gets it a few
/// mails, not one every time the last link expires.
const LINKS_PER_ADDRESS_PER_DAY: i64 = 6;

/// Has `to` been mailed its day's links of `purposes` asked for as
/// `asked_as` (those on their way, or that arrived), or the network of `ip`
/// asked for its part of them?
pub async fn address_had_its_day(
    state: &WebState,
    purposes: &[&str],
    to: &EmailAddress,
    ip: Option<IpAddr>,
    asked_as: Option<AskedAs>,
) -> Result<bool, WebError> {
    let (day_ago, network) = (now_ms() - DAY_MS, asked_from(ip));
    let (mut mailed, mut asked_by_network) = (0, 0);
    for purpose in purposes {
        let (to_address, from_network) =
            state.registry.web_links_to_since(purpose, to, day_ago, &network, asked_as).await?;
        mailed += to_address;
        asked_by_network += from_network;
    }
    Ok(mailed >= LINKS_PER_ADDRESS_PER_DAY || asked_by_network >= LINKS_PER_NETWORK_PER_DAY)
}

/// The part of an address's day of links (of one form) that one network
/// may ask for: whoever keeps asking for someone else's way back in, or
/// keeps typing their address, uses up half of its day, not all of it, and
/// its owner asking from elsewhere still gets theirs.
const LINKS_PER_NETWORK_PER_DAY: i64 = LINKS_PER_ADDRESS_PER_DAY / 2;

/// Links for addresses at one mail domain that one network may ask for in
/// a day, of one form's: a catch-all domain takes any local part, so one
/// network typing `a1@`, `a2@`, … would otherwise get a day's links for
/// each. Enough for an office subscribing its people's work addresses.
const LINKS_PER_NETWORK_AND_DOMAIN_PER_DAY: i64 = 30;

/// Has the network of `ip` asked today for its links of `purpose` to
/// addresses at `to`'s domain? Told in the log at most every ten minutes.
pub async fn network_had_its_day_of_the_domain(
    state: &WebState,
    purpose: &str,
    to: &EmailAddress,
    ip: Option<IpAddr>,
) -> Result<bool, WebError> {
    let network = asked_from(ip);
    let asked = state.registry.web_links_to_domain_since(purpose, to, now_ms() - DAY_MS, &network).await?;
    let had = asked >= LINKS_PER_NETWORK_AND_DOMAIN_PER_DAY;
    if had {
        static LAST_WARNED: AtomicI64 = AtomicI64::new(i64::MIN);
        warn_at_most_every_ten_minutes(&LAST_WARNED, || {
            tracing::warn!(
                network = network.trim_start_matches("net:"),
                domain = to.mailbox_domain(),
                "one network asked for {LINKS_PER_NETWORK_AND_DOMAIN_PER_DAY} {purpose} links to one mail domain today: its requests for that domain mail nothing until tomorrow"
            );
        });
    }
    Ok(had)
}

/// The network a link is asked from, as its row records it.
pub fn asked_from(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "net:unknown".to_owned(), guard::network_key)
}

/// Runs `warn` unless it ran (by `last`'s stamp) in the last ten minutes.
pub(super) fn warn_at_most_every_ten_minutes(last_warned: &AtomicI64, warn: impl FnOnce()) {
    let (now, last) = (now_ms(), last_warned.load(Ordering::Relaxed));
    if now.saturating_sub(last) >= 10 * 60 * 1000
        && last_warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        warn();
    }
}

/// Queues the email of link `link_id`, worth sending until the link stops
/// working (`expires_at`, ms), and ties the two: a link whose email is
/// given up stops counting as on its way. One that could not even be
/// queued is retired at once. A way back in names its incident and person,
/// so it goes only while the address is theirs and the incident open.
pub async fn send(
    state: &WebState,
    link_id: &str,
    to: &EmailAddress,
    email: LinkEmail,
    way_back_for: Option<(i64, &UserId)>,
    expires_at: i64,
) -> Result<(), WebError> {
    let queued = async {
        if !state.inner.can_mail {
            return Err(WebError("no [email] section: cannot mail a link".to_owned()));
        }
        let message = crate::messages::link(&state.config.homeserver.server_name, email);
        Ok(crate::outbox::queue_email(&state.registry, MessageKind::Link, to, &message, way_back_for, expires_at)
            .await?)
    };
    match queued.await {
        Ok(delivery) => {
            // The mail goes out either way; without the tie the link only
            // counts as on its way until it expires.
            if let Err(err) = state.registry.set_web_link_delivery(link_id, delivery).await {
                tracing::warn!(error = %err, "a queued link was not tied to its delivery");
            }
            Ok(())
        }
        Err(err) => {
            tracing::warn!(error = %err.0, "a link's email could not be queued: the link is retired");
            state.registry.use_web_link(link_id).await?;
            Err(err)
        }
    }
}
