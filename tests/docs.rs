//! The documentation holds together: every link between README.md, docs/ and config.toml
//! leads to a file that exists, and to a heading that exists in it; every page in docs/ is
//! reachable from the README; and the README stays a short first read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page in docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The targets of the Markdown links `[text](target)` in `text`, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' | '-' => Some('-'),
            '_' => Some('_'),
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// Checks every link of one file; returns what is wrong, one line each.
fn broken_links(page: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    let dir = page.parent().unwrap();
    for target in links(text) {
        if target.starts_with("http://") || target.starts_with("https://") {
            // Outside this repository (and this machine has no internet to ask).
            continue;
        }
        let (file, fragment) = match target.split_once('#') {
            Some((file, fragment)) => (file, Some(fragment)),
            None => (target.as_str(), None),
        };
        let path = if file.is_empty() {
            page.to_owned()
        } else {
            dir.join(file)
        };
        if !path.exists() {
            broken.push(format!("{}: {target}: no such file", page.display()));
            continue;
        }
        if let Some(fragment) = fragment {
            let linked = std::fs::read_to_string(&path).unwrap_or_default();
            if !anchors(&linked).contains(fragment) {
                broken.push(format!(
                    "{}: {target}: no heading with that anchor in {}",
                    page.display(),
                    path.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_link_between_the_readme_the_docs_and_config_toml_leads_somewhere() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        broken.extend(broken_links(&page, &text));
    }
    // config.toml names pages as plain paths in its comments.
    let config = std::fs::read_to_string(root().join("config.toml")).unwrap();
    for word in config.split(|c: char| c.is_whitespace() || "(),;\"'".contains(c)) {
        let word = word.trim_end_matches('.');
        if word.ends_with(".md") && !root().join(word).is_file() {
            broken.push(format!("config.toml: {word}: no such file"));
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_in_docs_is_linked_from_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|target| target.split('#').next().unwrap_or_default().to_owned())
        .collect();
    for page in pages().iter().skip(1) {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        assert!(linked.contains(&name), "README.md does not link {name}");
    }
}

#[test]
fn the_readme_is_a_short_first_read() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 220,
        "README.md has {lines} lines: keep it to what a newcomer needs first, and move the \
         rest into docs/"
    );
    // In the order a newcomer needs it.
    let order = [
        "## What you need",
        "## Run it",
        "## Open it on a phone",
        "## The settings people change",
        "## Deploy it",
        "## Test it",
        "## Documentation",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|heading| {
            readme
                .find(heading)
                .unwrap_or_else(|| panic!("README.md has no {heading:?}"))
        })
        .collect();
    assert!(
        positions.is_sorted(),
        "README.md's sections are out of order"
    );
}

#[test]
fn the_link_checker_finds_what_is_broken() {
    let page = root().join("README.md");
    let text = "[a](docs/nowhere.md) [b](docs/cluster.md#no-such-heading) [c](#run-it) \
                [d](https://example.com) [e](docs/cluster.md)\n```\n[f](in/a/code/block.md)\n```\n";
    let broken = broken_links(&page, text);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("docs/nowhere.md: no such file"));
    assert!(broken[1].contains("no-such-heading"));
    assert_eq!(
        anchor("The certificate (`mode = \"auto\"`)"),
        "the-certificate-mode--auto"
    );
    assert_eq!(anchor("Behind a reverse proxy"), "behind-a-reverse-proxy");
}
