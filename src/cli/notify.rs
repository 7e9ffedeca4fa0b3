//! `lifeboat notify ID [--dry-run] [--yes]`

use std::io::{BufRead, IsTerminal, Write};

use indicatif::ProgressBar;

use super::output::progress_bar;
use super::{Context, Failure, Outcome, exit};
use crate::config::{Config, EmailConfig};
use crate::dm::{CryptoStore, DmSender};
use crate::links::LINK_KEY;
use crate::mail::Mailer;
use crate::notify::{NoticeSettings, NotifyPlan, NotifyProgress, Transport, plan, send_deliveries};
use crate::recover::{AdminAccess, admin_access, recover, service_user_id};
use crate::registry::Registry;
use crate::registry::{Actor, Delivery, Incident, now_ms};
use crate::synapse::SynapseClient;
use crate::tokens::{ensure_notice_tokens, extend_unsent_tokens};

/// Emails in flight at once (and SMTP connections in the pool).
const CONCURRENCY: usize = 8;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The incident whose affected people are notified.
    id: i64,
    /// Render everything and print the counts and one sample; create and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Send without asking first (required when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
    /// Also send again what failed for good before (e.g. a rejected address
    /// that has since been fixed).
    #[arg(long)]
    retry_failed: bool,
}

struct Bar(ProgressBar);

impl NotifyProgress for Bar {
    fn deliveries(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    let config = context.config()?;
    let registry = context.registry(&config).await?;
    let incident = registry.require_incident(args.id).await?;
    if incident.resolved_at.is_some() {
        return Err(Failure::new(
            exit::FAILED,
            format!("incident {} is resolved: notices go out for open incidents only", incident.id),
        ));
    }
    let planned = plan(&registry, incident.id, service_user_id(&config).as_str())
        .await
        .map_err(|err| Failure::new(exit::FAILED, err))?;
    println!(
        "Incident {} \"{}\": {} affected; {} emails to {} people; {} affected people have no email contact; {} registration tokens to create.",
        incident.id,
        incident.title,
        planned.affected,
        planned.emails.emails,
        planned.emails.people_with_email,
        planned.emails.people_without_channel,
        planned.tokens_to_create
    );
    println!("Matrix DMs: {} (to affected accounts that exist now and to Matrix-ID contacts).", planned.dms);
    println!("Unreachable by any channel: {} affected people.", planned.unreachable);
    let unsubscribe = match &config.web {
        Some(web) => Some((web.public_url.clone(), registry.generated_secret(LINK_KEY).await?)),
        None => {
            eprintln!("note: [web] public_url is not set, so the emails carry no unsubscribe link");
            None
        }
    };
    let settings = NoticeSettings::new(
        config.homeserver.server_name.clone(),
        config.homeserver.public_url.clone(),
        unsubscribe,
        &incident,
    );

    if args.dry_run {
        // Render every email (a template problem shows now, not mid-send);
        // print the first. Tokens are placeholders: none is created.
        let expires = now_ms() + config.tokens.expiry.as_millis() as i64;
        let recipients = registry.email_recipients(incident.id).await?;
        for (index, (user_id, display_name, address, contact_id, account_state, recreated_at)) in
            recipients.into_iter().enumerate()
        {
            let sample = Delivery {
                id: 0,
                incident_id: incident.id,
                user_id,
                channel: "email".to_owned(),
                address: address.clone(),
                attempts: 0,
                display_name,
                recreated_at,
                account_state,
                contact_id: Some(contact_id),
                opted_out_at: None,
                token: Some("SAMPLE-TOKEN-not-valid".to_owned()),
                token_expires_at: Some(expires),
            };
            let rendered = settings
                .render(&incident, &sample)
                .map_err(|err| Failure::new(exit::FAILED, format!("the notice to {address} does not render: {err}")))?;
            if index == 0 {
                println!("--- sample email to {address} (the token is a placeholder) ---");
                println!("Subject: {}\n\n{}", rendered.subject, rendered.text);
                println!("--- end of sample ---");
            }
        }
        if planned.emails.emails == 0 {
            println!("No affected person has an email contact: no email would be sent.");
        }
        println!("Dry run: nothing was created or sent.");
        return Ok(exit::OK);
    }

    let email = config.email.as_ref().ok_or_else(|| {
        Failure::new(
            exit::USAGE,
            "notices go out by email: add an [email] section with smtp_url and from (see config.example.toml)",
        )
    })?;
    if !args.yes && !confirm(planned.emails.emails)? {
        println!("Nothing sent.");
        return Ok(exit::OK);
    }

    let lease = NotifyLease::take(&registry, incident.id).await?;
    let outcome = send(&config, &registry, &incident, &planned, &settings, email, args.retry_failed).await;
    lease.release().await;
    outcome
}

/// Tokens, deliveries, then sending, under the incident's notify lease.
async fn send(
    config: &Config,
    registry: &Registry,
    incident: &Incident,
    planned: &NotifyPlan,
    settings: &NoticeSettings,
    email: &EmailConfig,
    retry_failed: bool,
) -> Outcome {
    let client = match admin_access(config, registry).await.map_err(|err| Failure::new(exit::FAILED, err))? {
        AdminAccess::Working { client, .. } => client,
        AdminAccess::Dead { .. } => {
            eprintln!("Every admin token is rejected: recovering lifeboat's account through the shared secret.");
            recover(config, registry, &Actor::cli()).await.map_err(|err| Failure::new(exit::FAILED, err))?;
            match admin_access(config, registry).await.map_err(|err| Failure::new(exit::FAILED, err))? {
                AdminAccess::Working { client, .. } => client,
                AdminAccess::Dead { .. } => {
                    return Err(Failure::new(exit::FAILED, "the recovered admin token does not work either"));
                }
            }
        }
    };
    let created =
        ensure_notice_tokens(registry, &client, incident.id, config.tokens.expiry, service_user_id(config).as_str())
            .await
            .map_err(|err| Failure::new(exit::FAILED, format!("{err}; nothing was sent, run notify again")))?;
    if created > 0 {
        println!("Created {created} registration tokens in Synapse.");
    }
    let extended = extend_unsent_tokens(registry, &client, incident.id, config.tokens.expiry)
        .await
        .map_err(|err| Failure::new(exit::FAILED, format!("{err}; nothing was sent, run notify again")))?;
    if extended > 0 {
        println!("Gave {extended} registration tokens not yet sent a fresh expiry.");
    }
    registry.plan_email_deliveries(incident.id).await?;
    // Email does not depend on DMs: a DM sender that cannot start is a warning.
    let dm_sender = match dm_sender(config, registry, &client).await.unwrap_or_else(|failure| {
        eprintln!("note: no Matrix DMs this run: {}", failure.message);
        None
    }) {
        Some((sender, sender_id)) => {
            registry.plan_matrix_deliveries(incident.id, &sender_id).await?;
            // Mass DMs from a throttled account would crawl; 429s are still
            // waited out if the override cannot be set.
            if let Err(err) = client.override_rate_limit(&sender_id).await {
                eprintln!("note: could not lift the rate limits of {sender_id} ({err}); DMs may be slowed");
            }
            Some(sender)
        }
        None => {
            if planned.dms > 0 {
                eprintln!(
                    "note: no Matrix DMs: lifeboat has no credentials of its own account yet (run `lifeboat recover` after a wipe, or set bot.access_token)"
                );
            }
            None
        }
    };
    let mailer = Mailer::from_config(email, CONCURRENCY as u32).map_err(|err| Failure::new(exit::USAGE, err))?;
    // What an earlier run left unsent (or in flight when it died) is due now.
    if retry_failed {
        registry.retry_failed_deliveries(incident.id).await?;
    }
    registry.resume_deliveries(incident.id).await?;
    let bar = Bar(progress_bar("notices"));
    let mut sent = send_deliveries(registry, Transport::Email(&mailer), incident, settings, CONCURRENCY, &bar).await;
    if let (Ok(_), Some(sender)) = (&sent, &dm_sender) {
        sent = send_deliveries(registry, Transport::Matrix(sender), incident, settings, CONCURRENCY, &bar).await;
    }
    bar.0.finish_and_clear();
    mailer.shutdown().await;
    let counts = sent.map_err(|err| Failure::new(exit::FAILED, err))?;
    let detail = format!(
        "tokens created {created}; deliveries sent {}, failed {}, skipped {}, pending {}",
        counts.sent,
        counts.failed,
        counts.skipped,
        counts.pending + counts.sending
    );
    registry.audit(&Actor::cli(), "notify", Some(&format!("incident {}", incident.id)), Some(&detail)).await?;

    println!(
        "Deliveries: {} sent, {} failed, {} skipped (opted out), {} pending.",
        counts.sent,
        counts.failed,
        counts.skipped,
        counts.pending + counts.sending
    );
    let unfinished = counts.pending + counts.sending + counts.failed;
    if unfinished == 0 {
        return Ok(exit::OK);
    }
    for (address, error) in registry.delivery_errors(incident.id, 5).await? {
        println!("  {address}: {error}");
    }
    Err(Failure::new(
        exit::FAILED,
        format!(
            "{unfinished} notices were not delivered; fix the cause above and run `lifeboat notify {} --yes` again: it sends only what is missing (add --retry-failed to also resend those that failed for good)",
            incident.id
        ),
    ))
}

/// One notify per incident at a time: a lease in the registry, renewed while
/// the run lasts. A holder on this machine whose process is gone (killed
/// mid-run) is taken over at once; any other holder is waited for.
struct NotifyLease {
    registry: Registry,
    name: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl NotifyLease {
    const TTL_MS: i64 = 120_000;

    async fn take(registry: &Registry, incident_id: i64) -> Result<NotifyLease, Failure> {
        let name = format!("notify:incident:{incident_id}");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
        let holder = format!("{host}:{}", std::process::id());
        let mut taken = registry.take_lease(&name, &holder, now_ms() + Self::TTL_MS, None).await?;
        if let Err((current, _)) = &taken {
            let current = current.clone();
            let gone = current
                .strip_prefix(&format!("{host}:"))
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                taken = registry.take_lease(&name, &holder, now_ms() + Self::TTL_MS, Some(&current)).await?;
            }
        }
        if let Err((current, until)) = taken {
            return Err(Failure::new(
                exit::FAILED,
                format!(
                    "another `lifeboat notify {incident_id}` is running ({current}); let it finish, or if that process is gone, run again after {}",
                    crate::registry::format_time(until).unwrap_or_default()
                ),
            ));
        }
        let renewer = {
            let (registry, name, holder) = (registry.clone(), name.clone(), holder.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(Self::TTL_MS as u64 / 4)).await;
                    let _ = registry.take_lease(&name, &holder, now_ms() + Self::TTL_MS, None).await;
                }
            })
        };
        Ok(NotifyLease { registry: registry.clone(), name, holder, renewer })
    }

    async fn release(self) {
        self.renewer.abort();
        let _ = self.registry.release_lease(&self.name, &self.holder).await;
    }
}

/// lifeboat's own account, logged in for DMs: the recovered credentials, or
/// `bot.access_token`. `None` when it has neither.
async fn dm_sender(
    config: &Config,
    registry: &Registry,
    admin: &SynapseClient,
) -> Result<Option<(DmSender, String)>, Failure> {
    let service = service_user_id(config);
    let token = match registry.service_credential(service.as_str()).await? {
        Some(stored) => stored.access_token,
        None => match config.bot.as_ref().and_then(|bot| bot.access_token.as_ref()) {
            Some(token) => token.value.clone(),
            None => return Ok(None),
        },
    };
    let who = admin
        .with_token(token.clone())
        .whoami()
        .await
        .map_err(|err| Failure::new(exit::FAILED, format!("lifeboat's own account cannot send DMs: {err}")))?;
    let device = who.device_id.unwrap_or_else(|| "LIFEBOAT".to_owned());
    let encryption = config.bot.as_ref().filter(|bot| bot.encrypted_notices).map(|bot| CryptoStore {
        dir: bot.store_path.clone(),
        passphrase: bot.store_passphrase.as_ref().map(|secret| secret.value.clone()),
    });
    let sender = DmSender::connect(&config.homeserver.url, &who.user_id, &token, &device, encryption)
        .await
        .map_err(|err| Failure::new(exit::FAILED, err))?;
    Ok(Some((sender, who.user_id)))
}

/// Asks on the terminal; refuses to guess when there is none.
fn confirm(emails: i64) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            exit::USAGE,
            "stdin is not a terminal, so lifeboat cannot ask before sending: pass --yes to send",
        ));
    }
    print!("Send {emails} emails now? [y/N] ");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).ok();
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
