//! Headless Chromium driven through WebDriver (Debian's `chromium` and
//! `chromium-driver`), one fresh profile per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use super::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (phone-sized window when `phone`).
    pub async fn start() -> Browser {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is missing: apt-get install -y chromium chromium-driver"
        );
        // Both rustls providers are compiled in (lettre, fantoccini): pick one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::Builder::new().prefix("lifeboat-chromium-").tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1024,900",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), serde_json::json!({ "binary": CHROMIUM, "args": args }));
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::rustls()
                .expect("a WebDriver client")
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("Chromium did not start through chromedriver: {err}"),
            }
        };
        Browser { client, driver, _profile: profile }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|err| panic!("the browser opens {url}: {err}"));
    }

    /// The text of the first `css` element, waiting up to 10 s for it. An
    /// element found while a navigation ends can go stale: then it is
    /// looked up again.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waited = self.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await;
            let element = match waited {
                Ok(element) => element,
                Err(err) => {
                    let url = self.client.current_url().await.map(|url| url.to_string()).unwrap_or_default();
                    let source = self.client.source().await.unwrap_or_default();
                    panic!("no {css} on the page at {url}: {err}\n{source}")
                }
            };
            match element.text().await {
                Ok(text) => return text,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot read {css}: {err}"),
            }
        }
    }

    pub async fn body(&self) -> String {
        self.text("body").await
    }

    pub async fn fill(&self, css: &str, value: &str) {
        self.client.find(Locator::Css(css)).await.unwrap().send_keys(value).await.unwrap();
    }

    /// Clicks `css` (a submit button or link) and waits for the page it
    /// leads to, so what is read next is never the page before.
    pub async fn click(&self, css: &str) {
        let before = self.client.find(Locator::Css("html")).await.unwrap();
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"))
            .click()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The old document's root goes stale once the new page replaces it.
        while before.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "clicking {css} led to no new page within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the page under `target/test-artifacts/web/`.
    pub async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/web");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending chromedriver ends the Chromium it started.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Ends the WebDriver session (and with it Chromium).
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill();
    }
}
