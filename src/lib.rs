//! lifeboat: an off-server registry of a Synapse homeserver's accounts and
//! contacts, loss detection, and (in later parts) the way back in.

pub mod app;
pub mod backup;
pub mod bot;
pub mod campaign;
pub mod check;
mod checked_text;
pub mod cli;
pub mod config;
pub mod dm;
pub mod drill;
pub mod email;
pub mod holds;
pub mod lease;
pub mod links;
pub mod mail;
pub mod messages;
pub mod notice;
pub mod notify;
pub mod observation;
pub mod outbox;
pub mod owner_only;
pub mod plural;
pub mod probe;
pub mod reconcile;
pub mod recover;
pub mod registry;
pub mod rooms;
pub mod serve;
pub mod session;
pub mod synapse;
pub mod sync;
pub mod tokens;
pub mod user_id;
pub mod watch;
pub mod web;
pub mod worker;

/// The module graph points down: services never reach into a face (the CLI,
/// the bot, the web page, serve), and faces never into each other; only
/// `cli` (which runs everything) and `serve` (which runs the bot and the web
/// page) sit above them.
#[cfg(test)]
mod module_graph {
    const FACES: [&str; 4] = ["cli", "bot", "web", "serve"];

    /// Faces `module` may import.
    fn may_import(module: &str) -> &'static [&'static str] {
        match module {
            "cli" | "main" | "lib" => &FACES,
            "serve" => &["bot", "web"],
            _ => &[],
        }
    }

    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_module_imports_a_face_above_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut upward = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_str().unwrap();
            let module = first.trim_end_matches(".rs");
            let text = std::fs::read_to_string(&file).unwrap();
            for face in FACES {
                let own = face == module;
                let reaches = [format!("crate::{face}::"), format!("crate::{face};"), format!("crate::{face}::{{")];
                if !own
                    && !may_import(module).contains(&face)
                    && reaches.iter().any(|edge| text.contains(edge.as_str()))
                {
                    upward.push(format!("{} imports crate::{face}", relative.display()));
                }
            }
        }
        assert!(upward.is_empty(), "upward edges in the module graph: {upward:#?}");
    }
}
