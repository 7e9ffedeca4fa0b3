//! The web page's own emails: a signed link to a registry contact.

use askama::Template;

use super::WebState;
use super::pages::WebError;
use crate::email::EmailAddress;
use crate::mail::OutgoingEmail;

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

pub async fn send(state: &WebState, to: &str, email: LinkEmail) -> Result<(), WebError> {
    let Some(mailer) = &state.inner.mailer else {
        return Err(WebError("no [email] section: cannot mail a link".to_owned()));
    };
    let server_name = &state.config.homeserver.server_name;
    let text = LinkText { intro: &email.intro, url: &email.url, server_name }.render()?;
    let html =
        LinkHtml { subject: &email.subject, intro: &email.intro, action: &email.action, url: &email.url, server_name }
            .render()?;
    let outgoing = OutgoingEmail {
        to: EmailAddress::parse(to)?,
        subject: email.subject,
        text,
        html,
        // Its own random id: the link's id stays out of mail logs.
        message_id: format!("web.{}@{}", super::signing::new_link_id(), server_name),
        list_unsubscribe: None,
    };
    // The error may quote the message; it never holds the link.
    mailer.send(&outgoing).await.map_err(|err| WebError(format!("mailing a link failed: {err}")))
}
