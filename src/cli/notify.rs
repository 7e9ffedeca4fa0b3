//! `lifeboat notify ID [--dry-run] [--yes] [--json]`

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use super::output::{ask_yes, json_on_failure, print_json, progress_bar, show_progress};
use super::{Context, Failure, Outcome, exit};
use crate::campaign::{CampaignError, CampaignOptions, CampaignReport, notice_settings, run_campaign};
use crate::notify::{NotifyPlan, NotifyProgress, plan};
use crate::plain_text::one_line;
use crate::registry::{Actor, Incident, now_ms};

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
    /// Print one JSON object on stdout: `incident`, `plan` (the counts),
    /// `sample` (a dry run's first email: to, subject, text) and `sent`
    /// (tokens_created, tokens_extended, `deliveries` by state, `errors` as
    /// [address, reason] pairs, dms_left_to); needs --yes or --dry-run. The
    /// exit code is the same as without it.
    #[arg(long)]
    json: bool,
}

/// The progress bar, and Ctrl-C or SIGTERM asking the run to wind down.
struct Bar(ProgressBar, CancellationToken);

impl NotifyProgress for Bar {
    fn deliveries(&self, done: u64, total: u64) {
        show_progress(&self.0, done, total);
    }

    fn note(&self, text: &str) {
        self.0.suspend(|| eprintln!("note: {text}"));
    }

    fn passing(&self, text: &str) {
        self.0.suspend(|| eprintln!("{text}"));
    }

    fn stop(&self) -> Option<&CancellationToken> {
        Some(&self.1)
    }
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    if args.json && !args.yes && !args.dry_run {
        return Err(Failure::new(
            exit::USAGE,
            "--json needs --yes or --dry-run: lifeboat cannot ask before sending while it prints JSON",
        ));
    }
    let json = args.json;
    let notified = json_on_failure(notify(context, args).await, json)?;
    if json {
        print_json(&notified)?;
    }
    match notified.unfinished {
        Some(failure) => Err(failure),
        None => Ok(exit::OK),
    }
}

/// What `notify` did, as `--json` prints it.
#[derive(serde::Serialize)]
struct Notified {
    incident: i64,
    plan: NotifyPlan,
    /// The dry run's first email, as it would go (placeholder token and signatures).
    sample: Option<Sample>,
    /// What the send did; none on a dry run, or when nothing was sent.
    sent: Option<CampaignReport>,
    /// Why a run is needed again (printed on stderr, not in the JSON).
    #[serde(skip)]
    unfinished: Option<Failure>,
}

#[derive(serde::Serialize)]
struct Sample {
    to: String,
    subject: String,
    text: String,
}

async fn notify(context: &Context, args: Args) -> Result<Notified, Failure> {
    let text = !args.json;
    let (config, registry) = context.open().await?;
    let incident = registry.require_incident(args.id).await?;
    if incident.resolved_at.is_some() {
        return Err(Failure::failed(format!(
            "incident {} is resolved: notices go out for open incidents only",
            incident.id
        )));
    }
    let planned = plan(&config, &registry, incident.id).await.map_err(Failure::failed)?;
    if text {
        show_plan(&incident, &planned);
    }
    if config.web.is_none() {
        let claims = if config.recovery.mode == crate::config::RecoveryMode::Reclaim {
            ", and people whose ID is held get no claim link: their notice tells them to ask an admin to hand it back (`lifeboat holds claim`)"
        } else {
            ""
        };
        eprintln!("note: there is no [web] section, so the emails carry no unsubscribe link{claims}");
    }
    if let Some(holds_first) = planned.holds_first() {
        eprintln!("note: {holds_first}");
    }
    let settings = notice_settings(&config, &registry, &incident).await?;
    let mut notified = Notified { incident: incident.id, plan: planned, sample: None, sent: None, unfinished: None };

    if args.dry_run {
        // The first email, as it would go. Tokens are placeholders: none is created.
        if let Some(mut first) = registry.email_recipients(incident.id).await?.into_iter().next() {
            first.token = Some("SAMPLE-TOKEN-not-valid".to_owned());
            first.token_expires_at = Some(now_ms() + config.tokens.expiry.as_millis() as i64);
            let rendered = settings.render(&incident, &first);
            let text = unusable_links(&rendered.text);
            notified.sample = Some(Sample { to: first.address, subject: rendered.subject, text });
        }
        if text {
            show_dry_run(&notified);
        }
        return Ok(notified);
    }

    let planned = &notified.plan;
    let question = match config.email {
        Some(_) => format!("Send {} emails and {} Matrix DMs now? [y/N]", planned.emails.emails, planned.dms),
        None if planned.dms > 0 => {
            eprintln!("note: there is no [email] section, so only the Matrix DMs go; the emails wait for one");
            format!("Send {} Matrix DMs now? [y/N]", planned.dms)
        }
        None => {
            return Err(Failure::new(
                exit::USAGE,
                "nothing can be sent: there is no [email] section (add one with smtp_url and from, see config.example.toml) and no Matrix DM to send",
            ));
        }
    };
    let without_terminal = "stdin is not a terminal, so lifeboat cannot ask before sending: pass --yes to send";
    if !args.yes && !ask_yes(&question, without_terminal).await? {
        println!("Nothing sent.");
        return Ok(notified);
    }

    let stop = super::stop_on_signal();
    let bar = Bar(progress_bar("notices"), stop.clone());
    let devices = crate::dm::Devices::default();
    let options = CampaignOptions {
        actor: Actor::cli(),
        plan_new: true,
        retry_failed: args.retry_failed,
        progress: &bar,
        devices: &devices,
        mailer: None,
    };
    let outcome = run_campaign(&config, &registry, &incident, options).await;
    devices.close().await;
    bar.0.finish_and_clear();
    let report = outcome.map_err(|err| match err {
        CampaignError::Stopped => Failure::new(exit::INTERRUPTED, err),
        other => Failure::failed(other),
    })?;
    if text {
        show_sent(&report, incident.id);
    }
    notified.unfinished = unfinished(&report, &notified.plan, config.email.is_some(), stop.is_cancelled(), incident.id);
    notified.sent = Some(report);
    Ok(notified)
}

fn show_plan(incident: &Incident, planned: &NotifyPlan) {
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
}

fn show_dry_run(notified: &Notified) {
    if let Some(sample) = &notified.sample {
        println!("--- sample email to {} (the token and the links' signatures are placeholders) ---", sample.to);
        println!("Subject: {}\n\n{}", sample.subject, sample.text);
        println!("--- end of sample ---");
    }
    if notified.plan.emails.emails == 0 {
        println!("No affected person has an email contact: no email would be sent.");
    }
    println!("Dry run: nothing was created or sent.");
}

fn show_sent(report: &CampaignReport, incident: i64) {
    if report.tokens_created > 0 {
        println!("Created {} registration tokens in Synapse.", report.tokens_created);
    }
    if report.tokens_extended > 0 {
        println!("Gave {} registration tokens not yet sent a fresh expiry.", report.tokens_extended);
    }
    let counts = &report.counts;
    println!(
        "Deliveries: {} sent, {} failed, {} skipped (opted out, removed, or no longer theirs), {} pending.",
        counts.sent,
        counts.failed,
        counts.skipped,
        counts.pending + counts.sending
    );
    if let Some((holder, left)) = report.dms_left_to.as_ref().filter(|(_, left)| *left > 0) {
        println!(
            "{left} Matrix DMs are left to the lifeboat process that has the device's crypto store open ({holder}): \
             `lifeboat serve`'s delivery worker sends them; `lifeboat incident show {incident}` counts them."
        );
    }
    if report.unfinished() > 0 {
        // A refusal may be another server's words: one line each.
        for (address, error) in &report.errors {
            println!("  {}: {}", one_line(address), one_line(error));
        }
    }
}

/// Why `notify` must run again, if it must: notices not sent, or emails
/// waiting for an [email] section.
fn unfinished(
    report: &CampaignReport,
    planned: &NotifyPlan,
    can_mail: bool,
    stopped: bool,
    id: i64,
) -> Option<Failure> {
    let unfinished = report.unfinished();
    if unfinished == 0 && (can_mail || planned.emails.emails == 0) {
        return None;
    }
    Some(Failure::failed(if unfinished == 0 {
        format!(
            "{} emails were not sent: there is no [email] section; add one (see config.example.toml) and run `lifeboat notify {id} --yes` again: it sends only what is missing",
            planned.emails.emails
        )
    } else if stopped {
        format!(
            "interrupted: {unfinished} notices are not sent yet; run `lifeboat notify {id} --yes` again: it sends only what is missing"
        )
    } else {
        format!(
            "{unfinished} notices were not delivered; fix the cause above and run `lifeboat notify {id} --yes` again: it sends only what is missing (add --retry-failed to also resend those that failed for good)"
        )
    }))
}

/// The sample's signed links (unsubscribe, claim) with their signatures
/// replaced: a dry run's output must not hand out links that work.
fn unusable_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        rest = rest[at + 4..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
        out.push_str("SAMPLE-not-valid");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_samples_signatures_are_replaced() {
        let text = "Take back: https://l.test/claim?account=%40a%3Ax&sig=0a9f\nUnsubscribe: https://l.test/unsubscribe?contact=3&sig=ffee01 end";
        assert_eq!(
            super::unusable_links(text),
            "Take back: https://l.test/claim?account=%40a%3Ax&sig=SAMPLE-not-valid\nUnsubscribe: https://l.test/unsubscribe?contact=3&sig=SAMPLE-not-valid end"
        );
    }
}
