//! Incident notices, one per affected person: a plain-text and an HTML email,
//! and Markdown for a Matrix DM (askama: `templates/notice.{txt,html,md}`).
//! Both HTML and Markdown escape what they interpolate (askama.toml names
//! [`Markdown`] the escaper of `.md` templates), so a display name cannot
//! inject markup. The HTML gets the postmortem from [`markdown_to_safe_html`];
//! links and the token go in `|safe` after [`markdown_url`] and [`markdown_code`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;

use askama::Template;
use askama::filters::Escaper;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};

use crate::plain_text::{one_line, short_line};
use crate::registry::OldName;

/// Everything a notice says, for one person.
#[derive(Debug, Clone, Copy)]
pub struct NoticeContext<'a> {
    /// The homeserver's name, e.g. `example.org`.
    pub server_name: &'a str,
    /// Where to register, e.g. `https://matrix.example.org`.
    pub homeserver_url: &'a str,
    /// The person's former Matrix ID.
    pub user_id: &'a str,
    pub display_name: Option<&'a str>,
    pub incident_title: &'a str,
    /// The postmortem, in Markdown, as the admin wrote it.
    pub postmortem_markdown: &'a str,
    /// The account exists on the homeserver and is the person's (a
    /// survivor): the notice then says so instead of how to register again.
    pub account_works: bool,
    /// `markdown_to_safe_html(postmortem_markdown.trim())`, when the caller
    /// already has it (it is the same for every person of an incident).
    pub postmortem_html: Option<&'a str>,
    /// Their personal single-use registration token.
    pub token: Option<&'a str>,
    /// When the token expires, as a human date, e.g. `2026-12-09 19:00 UTC`.
    pub token_expires: Option<&'a str>,
    /// One-click unsubscribe link for the email footer.
    pub unsubscribe_url: Option<&'a str>,
    /// What their old username is now: held for them (kept), registered
    /// again by someone lifeboat cannot vouch for (taken), created for
    /// nobody (they need a new name, and their rooms cannot come back to
    /// the old one), or free.
    pub old_name: OldName,
    /// Their personal link to take the held ID back (`/claim`).
    pub claim_url: Option<&'a str>,
    /// An admin had locked or deactivated the account before the loss: no
    /// token and no claim link come with the notice, and it says why.
    pub locked_out: bool,
    /// Names of the person's rooms that live on on other servers: they are
    /// joined to them again once their ID is theirs again.
    pub rooms_back: &'a [String],
    /// Names of the person's rooms that lived only here and are gone.
    pub rooms_gone: &'a [String],
    /// Some of the rooms that come back are encrypted: their history does not.
    pub encrypted_rooms: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedNotice {
    pub subject: String,
    /// The text/plain email part.
    pub text: String,
    /// The text/html email part (a whole document).
    pub html: String,
    /// The Matrix DM version, empty unless asked for (Markdown; render it
    /// with [`markdown_to_safe_html`] for the `formatted_body`).
    pub markdown: String,
}

/// What the templates see: every value prepared once, borrowed from the
/// context where it needs no change.
struct NoticeView<'a> {
    account_works: bool,
    server_name: Cow<'a, str>,
    user_id: Cow<'a, str>,
    /// Display name, or the user ID when there is none.
    name: Cow<'a, str>,
    localpart: Cow<'a, str>,
    incident_title: Cow<'a, str>,
    postmortem_markdown: &'a str,
    postmortem_html: Cow<'a, str>,
    /// The homeserver URL, when it says more than the server name.
    homeserver_url: Option<Cow<'a, str>>,
    token: Option<Cow<'a, str>>,
    token_expires: Option<Cow<'a, str>>,
    unsubscribe_url: Option<Cow<'a, str>>,
    id_held: bool,
    claim_url: Option<Cow<'a, str>>,
    id_taken: bool,
    id_unregistrable: bool,
    locked_out: bool,
    rooms_back: Vec<Cow<'a, str>>,
    rooms_gone: Vec<Cow<'a, str>>,
    encrypted_rooms: bool,
    subject: String,
}

#[derive(Template)]
#[template(path = "notice.txt")]
struct NoticeText<'a> {
    n: &'a NoticeView<'a>,
}

#[derive(Template)]
#[template(path = "notice.html")]
struct NoticeHtml<'a> {
    n: &'a NoticeView<'a>,
}

#[derive(Template)]
#[template(path = "notice.md")]
struct NoticeMarkdown<'a> {
    n: &'a NoticeView<'a>,
}

/// Renders the subject, the two email parts and, when `dm`, the Matrix DM
/// Markdown (an email skips it: notices go out by the thousand).
pub fn render_notice(ctx: &NoticeContext, dm: bool) -> RenderedNotice {
    let view = NoticeView::new(ctx);
    let markdown_len = view.postmortem_markdown.len();
    RenderedNotice {
        text: render_sized(&NoticeText { n: &view }, markdown_len),
        html: render_sized(&NoticeHtml { n: &view }, view.postmortem_html.len()),
        markdown: if dm { render_sized(&NoticeMarkdown { n: &view }, markdown_len) } else { String::new() },
        subject: view.subject,
    }
}

/// Renders into a string sized for the template and the postmortem it
/// holds: askama's own estimate knows only the template, and growing the
/// string step by step copied the notice several times. The templates
/// only interpolate strings into a `String`: rendering cannot fail.
fn render_sized<T: Template>(template: &T, postmortem_len: usize) -> String {
    // The interpolated names, IDs, token and links.
    const VALUES: usize = 1024;
    let mut out = String::with_capacity(T::SIZE_HINT + postmortem_len + VALUES);
    template.render_into(&mut out).expect("a notice template renders");
    out
}

impl<'a> NoticeView<'a> {
    /// Rooms are told to a person who is coming back to their ID.
    fn tells_rooms(&self) -> bool {
        !self.account_works
            && !self.id_taken
            && !self.id_unregistrable
            && !self.locked_out
            && (!self.rooms_back.is_empty() || !self.rooms_gone.is_empty())
    }

    fn new(ctx: &NoticeContext<'a>) -> NoticeView<'a> {
        let server_name = one_line(ctx.server_name);
        let incident_title = one_line(ctx.incident_title);
        let homeserver_url = Some(one_line(ctx.homeserver_url)).filter(|url| {
            let bare = url.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
            !url.is_empty() && bare != server_name
        });
        let postmortem_markdown = ctx.postmortem_markdown.trim();
        let user_id = one_line(ctx.user_id);
        // Only a web link makes sense (and is safe) as an href.
        let web_link = |url: Option<&'a str>| {
            url.map(one_line).filter(|url| url.starts_with("https://") || url.starts_with("http://"))
        };
        let subject = if ctx.account_works {
            format!("[{server_name}] {incident_title}")
        } else {
            format!("[{server_name}] {incident_title}: your account and how to come back")
        };
        NoticeView {
            account_works: ctx.account_works,
            name: ctx.display_name.map(one_line).filter(|name| !name.is_empty()).unwrap_or_else(|| user_id.clone()),
            localpart: localpart_of(&user_id),
            user_id,
            postmortem_html: match ctx.postmortem_html {
                Some(html) => Cow::Borrowed(html),
                None => Cow::Owned(markdown_to_safe_html(postmortem_markdown)),
            },
            server_name,
            incident_title,
            postmortem_markdown,
            homeserver_url,
            token: ctx.token.map(one_line).filter(|token| !token.is_empty()),
            token_expires: ctx.token_expires.map(one_line).filter(|e| !e.is_empty()),
            unsubscribe_url: web_link(ctx.unsubscribe_url),
            id_held: ctx.old_name == OldName::Kept,
            claim_url: web_link(ctx.claim_url),
            id_taken: ctx.old_name == OldName::Taken,
            id_unregistrable: ctx.old_name == OldName::NobodyCan,
            locked_out: ctx.locked_out,
            rooms_back: ctx.rooms_back.iter().map(|room| room_label(room)).collect(),
            rooms_gone: ctx.rooms_gone.iter().map(|room| room_label(room)).collect(),
            encrypted_rooms: ctx.encrypted_rooms,
            subject,
        }
    }
}

/// Longest room name a notice shows: a name is whatever the room's makers
/// typed, and Synapse takes one of tens of kilobytes.
const ROOM_LABEL_CHARS: usize = 80;

/// A room's name on one line, cut at [`ROOM_LABEL_CHARS`], with nothing a
/// client or mail reader would make a link of: anyone who may rename a room
/// could otherwise put "Claim link broken? evil.example/claim" beside the
/// real claim link and token.
pub fn room_label(name: &str) -> Cow<'_, str> {
    let name = short_line(name, ROOM_LABEL_CHARS);
    let defanged = defanged(&name);
    if defanged == *name { name } else { Cow::Owned(defanged) }
}

/// `text` with what a linkifier would take for a web or mail address shown
/// as security notices quote one nobody should open: "://" as `[:]//`, a dot
/// before a letter (a domain's) as `[.]`, an @ between letters or digits as
/// `[@]`. The full stops a browser reads as a domain's dot (ideographic,
/// full-width, half-width) too, between Latin letters or digits, plain or
/// full-width (not in the middle of Chinese or Japanese text).
pub fn defanged(text: &str) -> String {
    // A browser reads full-width Latin as the plain letters it stands for.
    let latin = |c: char| c.is_ascii_alphanumeric() || matches!(c, '０'..='９' | 'Ａ'..='Ｚ' | 'ａ'..='ｚ');
    let chars: Vec<char> = text.replace("://", "[:]//").chars().collect();
    let mut out = String::with_capacity(text.len());
    for (at, &c) in chars.iter().enumerate() {
        let before = at.checked_sub(1).map(|i| chars[i]).filter(|c| c.is_alphanumeric());
        let after = chars.get(at + 1).copied();
        let between = before.is_some() && after.is_some_and(char::is_alphanumeric);
        let between_latin = before.is_some_and(latin) && after.is_some_and(|c| latin(c) && c.is_alphabetic());
        match c {
            '.' if between && after.is_some_and(char::is_alphabetic) => out.push_str("[.]"),
            '\u{3002}' | '\u{ff0e}' | '\u{ff61}' if between_latin => out.push_str("[.]"),
            '@' if between => out.push_str("[@]"),
            _ => out.push(c),
        }
    }
    out
}

/// The most a DM's content may take: Synapse refuses events over 64 KiB,
/// and encryption makes the content a third larger (base64).
pub const DM_CONTENT_BUDGET: usize = 44 * 1024;

/// How large a DM of `markdown` is: its text and the HTML made of it
/// ([`markdown_to_safe_html`]), as JSON.
pub fn dm_content_bytes(markdown: &str) -> usize {
    let html = markdown_to_safe_html(markdown);
    serde_json::to_string(&(markdown, html)).map_or(usize::MAX, |json| json.len())
}

/// Markdown → HTML with a real Markdown parser (pulldown-cmark), then
/// sanitized (ammonia): no scripts, no event handlers, no styles, no remote
/// images (an image becomes a link to it), only http(s) and mailto links.
pub fn markdown_to_safe_html(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let events = Parser::new_ext(markdown, options).flat_map(|event| match event {
        // A remote image would be fetched when the mail is opened (a
        // tracking pixel, or just a broken picture): link to it instead.
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            vec![Event::Start(Tag::Link { link_type, dest_url, title, id }), Event::Text(CowStr::Borrowed("(image) "))]
        }
        Event::End(TagEnd::Image) => vec![Event::End(TagEnd::Link)],
        other => vec![other],
    });
    let mut unsafe_html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut unsafe_html, events);

    SANITIZER.clean(&unsafe_html).to_string()
}

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::default();
    builder
        .rm_tags(["img", "map", "area"])
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer nofollow"));
    builder
});

/// `alice` for `@alice:example.org`; the whole ID when it is not of that form.
fn localpart_of<'a>(user_id: &Cow<'a, str>) -> Cow<'a, str> {
    let localpart =
        |id: &str| id.strip_prefix('@').and_then(|rest| rest.split_once(':')).map(|(localpart, _)| localpart.len());
    match user_id {
        Cow::Borrowed(id) => Cow::Borrowed(localpart(id).map_or(*id, |len| &id[1..=len])),
        Cow::Owned(id) => Cow::Owned(localpart(id).map_or(id.as_str(), |len| &id[1..=len]).to_owned()),
    }
}

/// Backslash-escapes the characters that mean something inside a line of
/// CommonMark (emphasis, code, links, raw HTML, entities, strikethrough,
/// tables, heading closers), so user data shows literally. Values are always
/// interpolated mid-line or after `## `, so line-start markers (`-`, `1.`)
/// need no escaping, and `.`, `-`, `:` stay readable in the plain body.
pub fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    Markdown.write_escaped_str(&mut out, text).expect("a String takes any text");
    out
}

/// askama's escaper for `.md` templates: [`markdown_escape`].
#[derive(Clone, Copy)]
pub struct Markdown;

impl askama::filters::Escaper for Markdown {
    fn write_escaped_str<W: std::fmt::Write>(&self, mut dest: W, text: &str) -> std::fmt::Result {
        for c in text.chars() {
            if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '!' | '&' | '~' | '|' | '#') {
                dest.write_char('\\')?;
            }
            dest.write_char(c)?;
        }
        Ok(())
    }
}

/// An autolink `<url>` for a plain http(s) URL, escaped text otherwise.
fn markdown_url(url: &str) -> String {
    let plain = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'));
    if plain { format!("<{url}>") } else { markdown_escape(url) }
}

/// A code span: easy to copy, shown literally, and never made a link by a
/// client. Fenced by more backticks than the value has in a row, and
/// padded by a space (which CommonMark takes off) when the value begins or
/// ends with one.
pub fn markdown_code(text: &str) -> String {
    let mut longest_run = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest_run = longest_run.max(run);
    }
    let fence = "`".repeat(longest_run + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "# What happened\n\n\
        The database was lost. <script>alert('x')</script>\n\n\
        <img src=x onerror=\"alert(1)\"> <a href=\"#\" onclick=\"steal()\">click</a>\n\n\
        [innocent](javascript:alert(document.cookie)) and \
        [data](data:text/html;base64,PHNjcmlwdD4=)\n\n\
        ![tracker](https://evil.example.com/pixel.gif)\n\n\
        <iframe src=\"https://evil.example.com\"></iframe>\
        <style>body{display:none}</style>\
        <p style=\"background:url(https://evil.example.com/x)\">styled</p>\n\n\
        <form action=\"https://evil.example.com\"><input name=a></form>\n";

    fn context<'a>() -> NoticeContext<'a> {
        NoticeContext {
            server_name: "example.org",
            homeserver_url: "https://matrix.example.org",
            user_id: "@alice:example.org",
            display_name: Some("Alice"),
            incident_title: "Database lost on 2026-11-20",
            postmortem_markdown: "We lost the database.\n\n**No backups** existed. \
                                  Details: <https://status.example.org>.",
            token: Some("Ab3~x.y_z-9"),
            token_expires: Some("2026-12-09 19:00 UTC"),
            unsubscribe_url: Some("https://lifeboat.example.org/unsubscribe?c=17&sig=ab"),
            account_works: false,
            postmortem_html: None,
            old_name: OldName::MayBeFree,
            claim_url: None,
            locked_out: false,
            rooms_back: &[],
            rooms_gone: &[],
            encrypted_rooms: false,
        }
    }

    #[test]
    fn a_person_coming_back_is_told_which_rooms_come_back_and_which_were_lost_and_that_encrypted_history_does_not() {
        let back = ["Across the water".to_owned(), "#harbour:example.org".to_owned()];
        let gone = ["Kitchen <b>".to_owned()];
        let ctx = NoticeContext {
            old_name: OldName::Kept,
            rooms_back: &back,
            rooms_gone: &gone,
            encrypted_rooms: true,
            ..context()
        };
        let notice = render_notice(&ctx, true);
        for part in [&notice.text, &notice.markdown] {
            assert!(part.contains("live on on other servers"), "{part}");
            assert!(part.contains("- Across the water\n"), "{part}");
            assert!(part.contains("lived only on example.org"), "{part}");
            assert!(part.contains("encrypted rooms from before the loss do not come back"), "{part}");
        }
        assert!(notice.text.contains("- Kitchen <b>"), "{}", notice.text);
        assert!(notice.html.contains("<li>Kitchen &#60;b&#62;</li>"), "{}", notice.html);
        assert!(notice.text.contains("- #harbour:example[.]org"), "{}", notice.text);
        assert!(notice.markdown.contains("- \\#harbour:example\\[.\\]org"), "{}", notice.markdown);

        let plain = render_notice(&NoticeContext { rooms_back: &back, encrypted_rooms: false, ..ctx }, true);
        assert!(!plain.text.contains("encrypted"), "{}", plain.text);
        let taken = render_notice(&NoticeContext { old_name: OldName::Taken, ..ctx }, true);
        assert!(!taken.text.contains("Your rooms"), "a stranger has the ID: its rooms are not the person's way back");
    }

    #[test]
    fn a_room_name_longer_than_a_line_is_cut_at_eighty_characters() {
        assert_eq!(room_label(&"Ω".repeat(200)), format!("{}…", "Ω".repeat(80)));
        assert_eq!(room_label(&"Ω".repeat(80)), "Ω".repeat(80));
        assert_eq!(room_label(" Book\nclub "), "Book club");
    }

    #[test]
    fn a_room_name_holding_a_web_or_mail_address_is_shown_with_no_link_in_it() {
        assert_eq!(
            room_label("Claim link broken? https://evil.example/claim"),
            "Claim link broken? https[:]//evil[.]example/claim"
        );
        assert_eq!(room_label("ask admin@evil.example"), "ask admin[@]evil[.]example");
        assert_eq!(room_label("Release 2.0 talk..."), "Release 2.0 talk...");
        assert_eq!(room_label("Book club"), "Book club");
        assert_eq!(room_label("evil\u{3002}example/claim evil\u{ff0e}example"), "evil[.]example/claim evil[.]example");
        assert_eq!(room_label("evil\u{200b}.example"), "evil .example", "nothing unseen in it either");
        assert_eq!(room_label("会議室。明日"), "会議室。明日", "Japanese text keeps its full stops");
        assert_eq!(
            room_label("ｅｖｉｌ．ｅｘａｍｐｌｅ"),
            "ｅｖｉｌ[.]ｅｘａｍｐｌｅ",
            "full-width Latin is read as Latin"
        );
        assert_eq!(room_label("ｅｖｉｌ。ｅｘａｍｐｌｅ"), "ｅｖｉｌ[.]ｅｘａｍｐｌｅ");
        let back = ["x https://evil.example/c".to_owned()];
        let notice = render_notice(&NoticeContext { rooms_back: &back, ..context() }, true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            assert!(!part.contains("evil.example"), "{part}");
        }
    }

    #[test]
    fn a_person_an_admin_had_locked_out_is_told_why_no_token_comes_and_no_steps() {
        let notice = render_notice(&NoticeContext { token: None, locked_out: true, ..context() }, true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            assert!(part.contains("locked or deactivated by an admin"), "{part}");
            assert!(!part.contains("could not create your personal registration token yet"), "{part}");
            assert!(!part.contains("To register again"), "{part}");
        }
    }

    const CLAIM: &str =
        "https://lifeboat.example.org/claim?account=%40alice%3Aexample.org&incident=1&hold=5&until=9&sig=ab";

    #[test]
    fn a_held_id_comes_with_its_claim_link_and_the_token_is_for_a_new_name() {
        let ctx = NoticeContext { old_name: OldName::Kept, claim_url: Some(CLAIM), ..context() };
        let notice = render_notice(&ctx, true);
        assert!(notice.text.contains(CLAIM), "{}", notice.text);
        assert!(notice.markdown.contains(CLAIM), "{}", notice.markdown);
        assert!(notice.html.contains(&CLAIM.replace('&', "&#38;")), "{}", notice.html);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            assert!(part.contains("is kept for you"), "{part}");
            assert!(part.contains("your old ID cannot be registered with it"), "{part}");
            assert!(!part.contains("can be registered again if nobody took it first"), "{part}");
        }
    }

    #[test]
    fn an_id_lost_but_not_held_may_be_registered_again_and_is_vouched_for_by_an_admin() {
        let notice = render_notice(&context(), true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            let flat = part.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains("can be registered again if nobody took it first"), "{part}");
            assert!(flat.contains("confirms it is you before it counts as yours"), "{part}");
        }
    }

    #[test]
    fn an_id_synapse_creates_for_nobody_asks_for_a_new_name_and_promises_no_rooms() {
        let back = ["Book club".to_owned()];
        let ctx = NoticeContext { old_name: OldName::NobodyCan, rooms_back: &back, ..context() };
        let notice = render_notice(&ctx, true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            let flat = part.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains("cannot be registered again: example.org no longer allows it"), "{part}");
            assert!(!flat.contains("can be registered again if nobody took it first"), "{part}");
            assert!(!flat.contains("Book club"), "{part}");
        }
    }

    #[test]
    fn a_taken_id_is_named_as_taken_and_gets_no_claim_link() {
        let notice = render_notice(&NoticeContext { old_name: OldName::Taken, ..context() }, true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            assert!(part.contains("registered again by someone we cannot"), "{part}");
            assert!(!part.contains("/claim"), "{part}");
            assert!(!part.contains("can be registered again if nobody took it first"), "{part}");
        }
    }

    #[test]
    fn a_claim_link_that_is_not_a_web_address_is_left_out() {
        let ctx = NoticeContext { old_name: OldName::Kept, claim_url: Some("javascript:alert(1)"), ..context() };
        let notice = render_notice(&ctx, true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            assert!(!part.contains("javascript:"), "{part}");
            assert!(part.contains("Ask an admin"), "{part}");
        }
    }

    /// What must never survive sanitizing, lowercased.
    const ACTIVE_CONTENT: [&str; 10] =
        ["<script", "alert(", "onerror", "onclick", "javascript:", "data:text", "<img", "<iframe", "<form", "<input"];

    fn assert_lacks(html: &str, forbidden: &[&str]) {
        let lower = html.to_lowercase();
        for bad in forbidden {
            assert!(!lower.contains(bad), "{bad:?} survived in:\n{html}");
        }
    }

    #[test]
    fn a_survivor_is_told_the_account_still_works_not_to_register() {
        let notice = render_notice(&NoticeContext { account_works: true, token: None, ..context() }, true);
        for part in [&notice.text, &notice.markdown, &notice.html] {
            assert!(part.contains("still works"), "{part}");
            assert!(!part.contains("register again"), "{part}");
            assert!(!part.contains("registration token"), "{part}");
        }
        assert!(!notice.subject.contains("how to come back"), "{}", notice.subject);
    }

    #[test]
    fn hostile_markdown_comes_out_inert() {
        let html = markdown_to_safe_html(HOSTILE);
        // Sanitized Markdown alone: no styles either (the email template has
        // its own, so the whole email is checked without these two).
        assert_lacks(&html, &ACTIVE_CONTENT);
        assert_lacks(&html, &["<style", "style="]);
        assert!(html.contains("<h1>What happened</h1>"), "{html}");
        assert!(html.contains("The database was lost."), "{html}");
        // The image became a plain link to it.
        assert!(html.contains("href=\"https://evil.example.com/pixel.gif\""), "{html}");
        assert!(html.contains("(image) tracker"), "{html}");
        assert!(html.contains("rel=\"noopener noreferrer nofollow\""), "{html}");
    }

    #[test]
    fn ordinary_markdown_renders() {
        let html = markdown_to_safe_html(
            "Hello *world*, see [the status page](https://status.example.org).\n\n\
             - one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        );
        assert!(html.contains("<em>world</em>"), "{html}");
        assert!(html.contains("<a href=\"https://status.example.org\""), "{html}");
        assert!(html.contains("<li>one</li>"), "{html}");
        assert!(html.contains("<table>"), "{html}");
    }

    #[test]
    fn a_hostile_postmortem_is_inert_in_the_html_email() {
        let ctx = NoticeContext { postmortem_markdown: HOSTILE, ..context() };
        let notice = render_notice(&ctx, true);
        // The postmortem goes in exactly as sanitized (checked above)...
        assert!(notice.html.contains(&markdown_to_safe_html(HOSTILE)));
        // ...and nothing else of it slipped through anywhere in the document.
        assert_lacks(&notice.html, &ACTIVE_CONTENT);
        assert_lacks(&notice.html, &["evil.example.com/x", "display:none"]);
        // The text part carries the Markdown as written (inert in text/plain).
        assert!(notice.text.contains("<script>alert('x')</script>"));
    }

    #[test]
    fn the_token_is_in_every_version() {
        let notice = render_notice(&context(), true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            assert!(part.contains("Ab3~x.y_z-9"), "token missing in:\n{part}");
            assert!(part.contains("2026-12-09 19:00 UTC"), "expiry missing in:\n{part}");
        }
        assert!(notice.text.contains("Your personal registration token: Ab3~x.y_z-9"));
        assert!(notice.markdown.contains("`Ab3~x.y_z-9`"));
        // The token survives Markdown rendering intact.
        assert!(markdown_to_safe_html(&notice.markdown).contains("<code>Ab3~x.y_z-9</code>"));
    }

    #[test]
    fn the_subject_names_the_server_and_the_incident() {
        let notice = render_notice(&context(), true);
        assert_eq!(notice.subject, "[example.org] Database lost on 2026-11-20: your account and how to come back");
        let ctx = NoticeContext { incident_title: "Two\r\nlines", ..context() };
        assert!(!render_notice(&ctx, true).subject.contains('\n'));
    }

    #[test]
    fn a_display_name_with_markup_is_escaped() {
        let ctx = NoticeContext { display_name: Some("<b>Mallory</b> & \"friends\""), ..context() };
        let notice = render_notice(&ctx, true);
        assert!(!notice.html.contains("<b>Mallory"), "{}", notice.html);
        assert!(notice.html.contains("&#60;b&#62;Mallory"), "{}", notice.html);
        assert!(notice.text.contains("Hello <b>Mallory</b> & \"friends\","));
        let dm_html = markdown_to_safe_html(&notice.markdown);
        assert!(!dm_html.contains("<b>Mallory"), "{dm_html}");
        assert!(dm_html.contains("&lt;b&gt;Mallory"), "{dm_html}");
    }

    #[test]
    fn greeting_falls_back_to_the_user_id() {
        let ctx = NoticeContext { display_name: None, ..context() };
        let notice = render_notice(&ctx, true);
        assert!(notice.text.starts_with("Hello @alice:example.org,"), "{}", notice.text);
        assert!(notice.html.contains("Hello @alice:example.org,"));
    }

    #[test]
    fn steps_to_register_again() {
        let notice = render_notice(&context(), true);
        let text = &notice.text;
        for needle in [
            "1. Open a Matrix client such as Element",
            "2. Choose \"Create account\"",
            "example.org",
            "https://matrix.example.org",
            "alice",
            "5. When asked for a registration token, enter: Ab3~x.y_z-9",
            "single use",
            "share",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
        assert!(notice.html.contains("<ol"), "{}", notice.html);
        assert!(notice.markdown.contains("1. "), "{}", notice.markdown);
    }

    #[test]
    fn without_a_token_an_admin_follows_up() {
        let ctx = NoticeContext { token: None, token_expires: None, ..context() };
        let notice = render_notice(&ctx, true);
        for part in [&notice.text, &notice.html, &notice.markdown] {
            assert!(part.contains("admin"), "{part}");
            assert!(!part.contains("Your personal registration token:"), "{part}");
        }
    }

    #[test]
    fn the_footer_explains_and_links_to_unsubscribe() {
        let notice = render_notice(&context(), true);
        assert!(
            notice.text.contains(
                "You get this because this address is a contact of @alice:example.org on \
             example.org."
            ),
            "{}",
            notice.text
        );
        assert!(notice.text.contains("Unsubscribe: https://lifeboat.example.org/unsubscribe?c=17&sig=ab"));
        let link = "href=\"https://lifeboat.example.org/unsubscribe?c=17&#38;sig=ab\"";
        assert!(notice.html.contains(link), "{}", notice.html);

        let ctx = NoticeContext { unsubscribe_url: None, ..context() };
        let notice = render_notice(&ctx, true);
        assert!(!notice.text.contains("Unsubscribe"));
        assert!(!notice.html.contains("Unsubscribe"));
    }

    #[test]
    fn the_postmortem_is_rendered_in_html_and_kept_as_written_in_text() {
        let notice = render_notice(&context(), true);
        assert!(notice.html.contains("<strong>No backups</strong>"), "{}", notice.html);
        assert!(notice.text.contains("**No backups** existed."));
        assert!(notice.markdown.contains("**No backups** existed."));
    }

    #[test]
    fn the_homeserver_url_is_not_repeated_when_it_is_the_server_name() {
        let ctx = NoticeContext { homeserver_url: "https://example.org/", ..context() };
        let notice = render_notice(&ctx, true);
        assert!(!notice.text.contains("https://example.org"), "{}", notice.text);
    }
}
