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
pub mod limit;
pub mod links;
pub mod mail;
pub mod messages;
pub mod notice;
pub mod notify;
pub mod observation;
pub mod outbox;
pub mod owner_only;
pub mod pace;
pub mod plain_text;
pub mod plural;
pub mod probe;
pub mod reconcile;
pub mod recover;
pub mod redact;
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
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    const FACES: [&str; 4] = ["cli", "bot", "web", "serve"];

    /// Faces `module` may import.
    fn may_import(module: &str) -> &'static [&'static str] {
        match module {
            "cli" | "main" | "lib" => &FACES,
            "serve" => &["bot", "web"],
            _ => &[],
        }
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }

    /// Top-level module → the top-level modules its code (not its
    /// comments) names as `crate::<module>`.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let module_of = |path: &Path| {
            let first = path.strip_prefix(&src).unwrap().components().next().unwrap();
            first.as_os_str().to_str().unwrap().trim_end_matches(".rs").to_owned()
        };
        let modules: BTreeSet<String> = files.iter().map(|file| module_of(file)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = Default::default();
        for file in &files {
            let module = module_of(file);
            let text = std::fs::read_to_string(file).unwrap();
            let code = text.lines().filter(|line| !line.trim_start().starts_with("//"));
            for line in code {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if name != module && modules.contains(&name) {
                        graph.entry(module.clone()).or_default().insert(name);
                    }
                }
            }
        }
        graph
    }

    /// A path back to `start` through `graph`, if there is one.
    fn cycle_from(start: &str, graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        let mut stack = vec![vec![start.to_owned()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            for next in graph.get(path.last().unwrap()).into_iter().flatten() {
                if next == start {
                    return Some([path.clone(), vec![next.clone()]].concat());
                }
                if seen.insert(next.clone()) {
                    stack.push([path.clone(), vec![next.clone()]].concat());
                }
            }
        }
        None
    }

    #[test]
    fn no_two_modules_import_each_other_even_through_others() {
        let graph = imports();
        let cycles: Vec<String> =
            graph.keys().filter_map(|module| cycle_from(module, &graph)).map(|path| path.join(" → ")).collect();
        assert!(cycles.is_empty(), "import cycles between top-level modules: {cycles:#?}");
    }

    #[test]
    fn no_module_imports_a_face_above_it() {
        let upward: Vec<String> = imports()
            .into_iter()
            .flat_map(|(module, names)| {
                let allowed = may_import(&module);
                names
                    .into_iter()
                    .filter(|name| FACES.contains(&name.as_str()) && !allowed.contains(&name.as_str()))
                    .map(move |face| format!("{module} imports crate::{face}"))
            })
            .collect();
        assert!(upward.is_empty(), "upward edges in the module graph: {upward:#?}");
    }
}
