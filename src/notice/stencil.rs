//! Email notices for a whole incident: each shape of the notice rendered
//! once, then filled in per person.
//!
//! The notices of one incident differ only in a few values (name, user ID,
//! localpart, token, expiry, unsubscribe link) and in which optional
//! paragraphs they hold: the notice's shape (survivor or not, with a token
//! or not, with an expiry, with an unsubscribe link). A notify run renders
//! each shape's templates once, with a placeholder character standing for
//! each value, and splits the result at the placeholders. A person's notice
//! is then the fixed pieces with their values written between them, escaped
//! as the template escapes them: byte for byte what [`render_email_notice`]
//! gives (the tests compare the two on hostile values), without rendering
//! the postmortem and the template text again for every one of 10,000
//! people.
//!
//! An incident whose title or postmortem holds a placeholder character
//! (they are from Unicode's private use area) is rendered in full for every
//! person instead.

use std::borrow::Cow;
use std::ops::RangeInclusive;
use std::sync::OnceLock;

use askama::Template;
use askama::filters::{Escaper, Html};

use super::{
    EmailNotice, IncidentValues, NoticeContext, NoticeError, NoticeHtml, NoticeText, NoticeView, PersonValues,
    render_email_notice,
};

/// A person's values, in placeholder order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Name,
    UserId,
    Localpart,
    Token,
    TokenExpires,
    UnsubscribeUrl,
}

const SLOTS: [Slot; 6] =
    [Slot::Name, Slot::UserId, Slot::Localpart, Slot::Token, Slot::TokenExpires, Slot::UnsubscribeUrl];

/// The placeholder characters, one per slot: U+E000 for the first.
const PLACEHOLDERS: RangeInclusive<char> = '\u{E000}'..='\u{E005}';

impl Slot {
    fn placeholder(self) -> char {
        char::from_u32(*PLACEHOLDERS.start() as u32 + self as u32).expect("within the private use area")
    }

    fn of(c: char) -> Option<Slot> {
        PLACEHOLDERS.contains(&c).then(|| SLOTS[(c as u32 - *PLACEHOLDERS.start() as u32) as usize])
    }

    fn value<'v>(self, person: &'v PersonValues<'_>) -> &'v str {
        match self {
            Slot::Name => &person.name,
            Slot::UserId => &person.user_id,
            Slot::Localpart => &person.localpart,
            // A shape without the value never asks for it.
            Slot::Token => person.token.as_deref().unwrap_or_default(),
            Slot::TokenExpires => person.token_expires.as_deref().unwrap_or_default(),
            Slot::UnsubscribeUrl => person.unsubscribe_url.as_deref().unwrap_or_default(),
        }
    }
}

/// Which optional paragraphs a notice holds.
#[derive(Debug, Clone, Copy)]
struct Shape {
    account_works: bool,
    token: bool,
    token_expires: bool,
    unsubscribe_url: bool,
}

impl Shape {
    const COUNT: usize = 16;

    fn of(person: &PersonValues) -> Shape {
        Shape {
            account_works: person.account_works,
            token: person.token.is_some(),
            token_expires: person.token_expires.is_some(),
            unsubscribe_url: person.unsubscribe_url.is_some(),
        }
    }

    fn index(self) -> usize {
        usize::from(self.account_works)
            | usize::from(self.token) << 1
            | usize::from(self.token_expires) << 2
            | usize::from(self.unsubscribe_url) << 3
    }

    /// A person of this shape whose every value is its placeholder.
    fn placeholder_person(self) -> PersonValues<'static> {
        let value = |slot: Slot| Cow::Owned(slot.placeholder().to_string());
        let optional = |present: bool, slot: Slot| present.then(|| value(slot));
        PersonValues {
            account_works: self.account_works,
            user_id: value(Slot::UserId),
            name: value(Slot::Name),
            localpart: value(Slot::Localpart),
            token: optional(self.token, Slot::Token),
            token_expires: optional(self.token_expires, Slot::TokenExpires),
            unsubscribe_url: optional(self.unsubscribe_url, Slot::UnsubscribeUrl),
        }
    }
}

/// One rendered part with holes where the person's values go.
struct Part {
    /// The part without its placeholders.
    fixed: String,
    /// Where each value goes in `fixed`, in order.
    holes: Vec<(usize, Slot)>,
}

impl Part {
    fn split(rendered: &str) -> Part {
        let mut fixed = String::with_capacity(rendered.len());
        let mut holes = Vec::new();
        let mut start = 0;
        for (at, c) in rendered.char_indices() {
            if let Some(slot) = Slot::of(c) {
                fixed.push_str(&rendered[start..at]);
                holes.push((fixed.len(), slot));
                start = at + c.len_utf8();
            }
        }
        fixed.push_str(&rendered[start..]);
        Part { fixed, holes }
    }

    fn fill(&self, person: &PersonValues, escape: impl Fn(&mut String, &str)) -> String {
        let values: usize = self.holes.iter().map(|(_, slot)| slot.value(person).len()).sum();
        // Room for the values escaped (`&` becomes five bytes, `&#38;`).
        let mut out = String::with_capacity(self.fixed.len() + values + values / 2);
        let mut start = 0;
        for &(at, slot) in &self.holes {
            out.push_str(&self.fixed[start..at]);
            escape(&mut out, slot.value(person));
            start = at;
        }
        out.push_str(&self.fixed[start..]);
        out
    }
}

/// One shape's subject and parts.
struct Stencil {
    subject: String,
    text: Part,
    html: Part,
}

impl Stencil {
    fn render(incident: IncidentValues, shape: Shape) -> Option<Stencil> {
        let view = NoticeView::from_parts(incident, shape.placeholder_person());
        let text = NoticeText { n: &view }.render().ok()?;
        let html = NoticeHtml { n: &view }.render().ok()?;
        Some(Stencil { subject: view.subject, text: Part::split(&text), html: Part::split(&html) })
    }

    fn fill(&self, person: &PersonValues) -> EmailNotice {
        EmailNotice {
            subject: self.subject.clone(),
            text: self.text.fill(person, |out, value| out.push_str(value)),
            html: self.html.fill(person, |out, value| {
                Html.write_escaped_str(&mut *out, value).expect("writing to a String cannot fail")
            }),
        }
    }
}

/// The email notices of one incident: see the module's comment.
pub struct EmailStencils {
    server_name: String,
    homeserver_url: String,
    incident_title: String,
    postmortem_markdown: String,
    postmortem_html: String,
    /// False when a placeholder character occurs in the incident's values.
    usable: bool,
    /// Rendered on first use; `None` when rendering failed (every notice of
    /// that shape is then rendered in full, which reports the error).
    shapes: [OnceLock<Option<Stencil>>; Shape::COUNT],
}

impl EmailStencils {
    /// Stencils for the incident values of `ctx` (made with
    /// [`NoticeContext::of_incident`]; a person's values are not read).
    pub fn new(ctx: &NoticeContext) -> EmailStencils {
        let incident = IncidentValues::new(ctx);
        let holds_placeholder = |text: &str| text.contains(|c| PLACEHOLDERS.contains(&c));
        let usable = ![
            &*incident.server_name,
            incident.homeserver_url.as_deref().unwrap_or_default(),
            &incident.incident_title,
            incident.postmortem_markdown,
            &incident.postmortem_html,
        ]
        .into_iter()
        .any(holds_placeholder);
        EmailStencils {
            server_name: ctx.server_name.to_owned(),
            homeserver_url: ctx.homeserver_url.to_owned(),
            incident_title: ctx.incident_title.to_owned(),
            postmortem_markdown: ctx.postmortem_markdown.to_owned(),
            postmortem_html: incident.postmortem_html.into_owned(),
            usable,
            shapes: Default::default(),
        }
    }

    /// The same as [`render_email_notice`]`(ctx)`: from the stencil of the
    /// person's shape when `ctx` is of this incident, in full otherwise.
    pub fn render(&self, ctx: &NoticeContext) -> Result<EmailNotice, NoticeError> {
        if !self.usable || !self.is_of_this_incident(ctx) {
            return render_email_notice(ctx);
        }
        let person = PersonValues::new(ctx);
        let shape = Shape::of(&person);
        let stencil = self.shapes[shape.index()].get_or_init(|| Stencil::render(self.incident_values(), shape));
        match stencil {
            Some(stencil) => Ok(stencil.fill(&person)),
            None => render_email_notice(ctx),
        }
    }

    fn is_of_this_incident(&self, ctx: &NoticeContext) -> bool {
        ctx.server_name == self.server_name
            && ctx.homeserver_url == self.homeserver_url
            && ctx.incident_title == self.incident_title
            && ctx.postmortem_markdown == self.postmortem_markdown
            && ctx.postmortem_html.is_none_or(|html| html == self.postmortem_html)
    }

    fn incident_values(&self) -> IncidentValues<'_> {
        IncidentValues::new(&NoticeContext::of_incident(
            &self.server_name,
            &self.homeserver_url,
            &self.incident_title,
            &self.postmortem_markdown,
            Some(&self.postmortem_html),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident<'a>() -> NoticeContext<'a> {
        NoticeContext::of_incident(
            "example.org",
            "https://matrix.example.org",
            "Database lost <on> 2026-11-20 & \"more\"",
            "We lost the **database**.\n\n<script>alert(1)</script> a = b\n",
            None,
        )
    }

    /// People of every shape, with values that need escaping, that are
    /// empty, that span lines or that hold the placeholders themselves.
    fn people() -> Vec<NoticeContext<'static>> {
        let names =
            [Some("Alice"), Some("<b>Mallory</b> & \"friends\" 'x'"), Some(" \r\n "), None, Some("Zoë \u{E001}")];
        let user_ids = ["@alice:example.org", "@m&llory:example.org", "not-a-matrix-id", "@\u{E000}:example.org"];
        let tokens = [Some("Ab3~x.y_z-9"), Some("a&b<c>\"d'"), Some(""), None];
        let expiries = [Some("2026-12-09 19:00 UTC"), Some("soon & <later>"), None];
        let links = [Some("https://lifeboat.example.org/unsubscribe?c=17&sig=ab"), Some("javascript:alert(1)"), None];
        let mut people = Vec::new();
        for (i, account_works) in [false, true].into_iter().enumerate() {
            for (j, token) in tokens.into_iter().enumerate() {
                for (k, token_expires) in expiries.into_iter().enumerate() {
                    for (l, unsubscribe_url) in links.into_iter().enumerate() {
                        let n = i + j + k + l;
                        people.push(NoticeContext {
                            user_id: user_ids[n % user_ids.len()],
                            display_name: names[n % names.len()],
                            account_works,
                            token,
                            token_expires,
                            unsubscribe_url,
                            ..incident()
                        });
                    }
                }
            }
        }
        people
    }

    #[test]
    fn every_person_gets_exactly_what_a_full_render_gives() {
        let stencils = EmailStencils::new(&incident());
        for person in people() {
            assert_eq!(stencils.render(&person).unwrap(), render_email_notice(&person).unwrap(), "{person:?}");
        }
        // ...and every shape came from a stencil, not from the full render.
        let used = stencils.shapes.iter().filter(|shape| matches!(shape.get(), Some(Some(_)))).count();
        assert_eq!(used, Shape::COUNT);
    }

    #[test]
    fn the_values_really_are_filled_in_per_person() {
        let stencils = EmailStencils::new(&incident());
        let alice = NoticeContext { user_id: "@alice:example.org", token: Some("TOKEN-A"), ..incident() };
        let bob = NoticeContext { user_id: "@bob:example.org", token: Some("TOKEN-B"), ..incident() };
        let (alice, bob) = (stencils.render(&alice).unwrap(), stencils.render(&bob).unwrap());
        assert!(alice.text.contains("TOKEN-A") && !alice.text.contains("TOKEN-B"), "{}", alice.text);
        assert!(bob.html.contains("TOKEN-B") && !bob.html.contains("TOKEN-A"), "{}", bob.html);
        assert!(!alice.html.contains(|c| PLACEHOLDERS.contains(&c)));
    }

    #[test]
    fn a_postmortem_holding_a_placeholder_is_rendered_in_full() {
        let odd = NoticeContext { postmortem_markdown: "Odd \u{E001} character", ..incident() };
        let stencils = EmailStencils::new(&odd);
        assert!(!stencils.usable);
        let person = NoticeContext { user_id: "@alice:example.org", ..odd };
        let notice = stencils.render(&person).unwrap();
        assert_eq!(notice, render_email_notice(&person).unwrap());
        assert!(notice.text.contains("Odd \u{E001} character"));
    }

    #[test]
    fn a_notice_of_another_incident_is_rendered_in_full() {
        let stencils = EmailStencils::new(&incident());
        let other = NoticeContext { incident_title: "Another one", user_id: "@alice:example.org", ..incident() };
        assert_eq!(stencils.render(&other).unwrap(), render_email_notice(&other).unwrap());
        assert!(stencils.shapes.iter().all(|shape| shape.get().is_none()));
    }
}
