//! The text of every message lifeboat sends besides the incident notices
//! (those are `notice`'s), each from its template in `templates/`. The
//! HTML part is the text read as Markdown, made safe, except for the web
//! page's link, which has a template with a button.

use askama::Template;

use crate::notice::markdown_to_safe_html;
use crate::registry::OldName;
use crate::user_id::UserId;

/// A message ready for the outbox.
#[derive(Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Rendered {
    fn from_text(subject: String, text: String) -> Rendered {
        let html = markdown_to_safe_html(&text);
        Rendered { subject, text, html }
    }
}

#[derive(Template)]
#[template(path = "messages/alert.txt", escape = "none")]
struct AlertText<'a> {
    markdown: &'a str,
    server_name: &'a str,
}

/// The watcher's alert, by email: the same Markdown as in the admin room.
pub fn alert(server_name: &str, subject: &str, markdown: &str) -> Rendered {
    let text = render(AlertText { markdown, server_name });
    Rendered { subject: subject.to_owned(), text, html: markdown_to_safe_html(markdown) }
}

/// The web page's mail: a signed link, with a sentence before it and the
/// label of its button.
pub struct LinkEmail {
    pub subject: String,
    pub intro: String,
    pub action: String,
    pub url: String,
}

#[derive(Template)]
#[template(path = "web/link_email.txt", escape = "none")]
struct LinkText<'a> {
    intro: &'a str,
    url: &'a str,
    server_name: &'a str,
}

#[derive(Template)]
#[template(path = "web/link_email.html")]
struct LinkHtml<'a> {
    subject: &'a str,
    intro: &'a str,
    action: &'a str,
    url: &'a str,
    server_name: &'a str,
}

pub fn link(server_name: &str, email: LinkEmail) -> Rendered {
    let text = render(LinkText { intro: &email.intro, url: &email.url, server_name });
    let html = render(LinkHtml {
        subject: &email.subject,
        intro: &email.intro,
        action: &email.action,
        url: &email.url,
        server_name,
    });
    Rendered { subject: email.subject, text, html }
}

#[derive(Template)]
#[template(path = "messages/code.txt", escape = "none")]
struct CodeText<'a> {
    user_id: &'a str,
    code: &'a str,
    valid_minutes: u64,
    server_name: &'a str,
}

/// The code that proves an address, asked for by `user_id` in a DM. The
/// address is any one the asker typed, and their ID's localpart is theirs to
/// choose ("www.example.com/claim"): it is shown with nothing a mail reader
/// makes a link of.
pub fn contact_code(server_name: &str, user_id: &UserId, code: &str, valid_minutes: u64) -> Rendered {
    let user_id = format!("@{}:{}", crate::notice::defanged(user_id.localpart()), user_id.server_name());
    Rendered::from_text(
        format!("Your lifeboat code for {server_name}: {code}"),
        render(CodeText { user_id: &user_id, code, valid_minutes, server_name }),
    )
}

#[derive(Template)]
#[template(path = "messages/contact_added.md", escape = "none")]
struct ContactAdded<'a> {
    server_name: &'a str,
    /// A code span: a visitor typed it, and its local part may read as a
    /// web address that a client would make a link of.
    address: &'a str,
    /// As typed in a command: a code span.
    address_in_command: &'a str,
}

/// The word to an account that `address` was added to it from the web
/// page (Markdown, for a Matrix message), and how to take it off.
pub fn contact_added(server_name: &str, address: &str) -> String {
    let shown = crate::notice::markdown_code(address);
    let command = crate::notice::markdown_code(&format!("contact remove {address}"));
    render(ContactAdded { server_name, address: &shown, address_in_command: &command })
}

#[derive(Template)]
#[template(path = "messages/subscribe_code.md", escape = "none")]
struct SubscribeCode<'a> {
    code: &'a str,
    server_name: &'a str,
    until: &'a str,
    /// A code span: a visitor typed it, and its local part may read as a
    /// web address (`example.com/confirm@their.domain`) that a client would
    /// make a link of, next to the code.
    address: &'a str,
}

/// The code the web page DMs to the account `address` is to be added to
/// (Markdown, for a Matrix message). It names the address, so a person
/// lured onto a stranger's link sees whose address they would add, and
/// `until`, since the page its link opens names both.
pub fn subscribe_code(server_name: &str, code: &str, until: &str, address: &str) -> String {
    render(SubscribeCode { code, server_name, until, address: &crate::notice::markdown_code(address) })
}

#[derive(Template)]
#[template(path = "messages/claim_link.txt", escape = "none")]
struct ClaimLinkText<'a> {
    user_id: &'a str,
    url: &'a str,
    until: &'a str,
    server_name: &'a str,
}

/// A claim link an admin had the bot mail.
pub fn claim_link(server_name: &str, user_id: &str, url: &str, until: &str) -> Rendered {
    Rendered::from_text(
        format!("Your link to take back your Matrix ID on {server_name}"),
        render(ClaimLinkText { user_id, url, until, server_name }),
    )
}

#[derive(Template)]
#[template(path = "messages/token.txt", escape = "none")]
struct TokenText<'a> {
    user_id: &'a str,
    localpart: &'a str,
    token: &'a str,
    until: &'a str,
    homeserver_url: &'a str,
    server_name: &'a str,
    old_name: OldName,
}

/// A registration token an admin had the bot mail, and what it leaves the
/// person's old username to.
pub fn registration_token(
    server_name: &str,
    user_id: &UserId,
    token: &str,
    until: &str,
    homeserver_url: &str,
    old_name: OldName,
) -> Rendered {
    let (localpart, user_id) = (user_id.localpart(), user_id.as_str());
    Rendered::from_text(
        format!("Your new registration token for {server_name}"),
        render(TokenText { user_id, localpart, token, until, homeserver_url, server_name, old_name }),
    )
}

#[derive(Template)]
#[template(path = "messages/drill.txt", escape = "none")]
struct DrillText<'a> {
    server_name: &'a str,
}

/// `drill`'s test message.
pub fn drill(server_name: &str) -> Rendered {
    Rendered::from_text(format!("[{server_name}] lifeboat drill: test message"), render(DrillText { server_name }))
}

/// These templates only interpolate strings: rendering cannot fail.
fn render(template: impl Template) -> String {
    template.render().expect("a message template renders")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> UserId {
        UserId::parse(text).unwrap()
    }

    #[test]
    fn a_mailed_token_says_what_it_leaves_the_old_username_to() {
        let said = |old_name| {
            let mail = registration_token(
                "example.org",
                &id("@alice:example.org"),
                "tok",
                "soon",
                "https://m.example.org/",
                old_name,
            );
            mail.text.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert!(
            said(OldName::MayBeFree)
                .contains("Your old username, alice, can be registered again if nobody took it first")
        );
        assert!(said(OldName::Kept).contains("your old ID is kept for you, and this token cannot register it"));
        assert!(said(OldName::Taken).contains("alice was registered again since the loss"));
        assert!(said(OldName::NobodyCan).contains("alice cannot be registered again, example.org no longer allows it"));
    }

    #[test]
    fn a_contact_code_mail_names_who_asked_the_code_and_how_long_it_works() {
        let mail = contact_code("example.org", &id("@alice:example.org"), "123456", 30);
        assert_eq!(mail.subject, "Your lifeboat code for example.org: 123456");
        assert!(mail.text.contains("@alice:example.org asked lifeboat on example.org"), "{}", mail.text);
        assert!(mail.text.contains("    contact verify 123456\n"), "{}", mail.text);
        assert!(mail.text.contains("works for 30 minutes"), "{}", mail.text);
        assert!(mail.html.contains("123456"), "{}", mail.html);
        let chosen = contact_code("example.org", &id("@www.evil.example/claim:example.org"), "123456", 30);
        assert!(chosen.text.contains("@www[.]evil[.]example/claim:example.org asked"), "{}", chosen.text);
        assert!(!chosen.html.contains("evil.example"), "{}", chosen.html);
        assert!(chosen.text.contains("lifeboat on example.org to use"), "{}", chosen.text);
    }

    #[test]
    fn a_subscription_code_dm_warns_never_to_give_the_code_away() {
        let dm = subscribe_code("example.org", "12345678", "2026-12-05 17:30 UTC", "a_b*c@example.net");
        assert!(dm.contains("**12345678**"), "{dm}");
        assert!(dm.contains("that `a_b*c@example.net` get incident notices"), "the address, shown as typed: {dm}");
        // A local part that reads as a web address is shown as code, which
        // clients make no link of, whatever its backticks.
        let typed = "example.com/confirm`@their.example";
        let dm = subscribe_code("example.org", "12345678", "2026-12-05 17:30 UTC", typed);
        assert!(dm.contains(&format!("that ``{typed}`` get")), "{dm}");
        assert!(dm.contains(&format!("only if ``{typed}`` is your own")), "{dm}");
        assert!(dm.contains("It works until 2026-12-05 17:30 UTC"), "{dm}");
        assert!(dm.contains("Never give it to anyone"), "{dm}");
        assert!(dm.contains("nobody from example.org will ever ask you for it"), "{dm}");
    }

    #[test]
    fn the_word_that_an_address_was_added_says_how_to_take_it_off() {
        let dm = contact_added("example.org", "a_b@example.net");
        assert!(dm.contains("`a_b@example.net` now gets incident notices"), "{dm}");
        assert!(dm.contains("`contact remove a_b@example.net`"), "{dm}");
    }

    #[test]
    fn an_alert_mail_carries_the_alert_and_is_signed() {
        let mail = alert("example.org", "Accounts lost", "**12 accounts** are gone");
        assert!(mail.text.starts_with("**12 accounts** are gone\n"), "{}", mail.text);
        assert!(mail.text.contains("lifeboat on example.org"), "{}", mail.text);
        assert!(mail.html.contains("<strong>12 accounts</strong>"), "{}", mail.html);
    }
}
