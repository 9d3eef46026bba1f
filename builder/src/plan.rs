//! A Dockerfile stage turned into build steps, without running anything: the image settings the stage leaves
//! (ENV, WORKDIR, USER, EXPOSE, LABEL, CMD, ENTRYPOINT, SHELL, with Docker's variable expansion), and the
//! steps that make layers: COPY/ADD from the build context (files chosen here, checked to stay inside it) and
//! RUN (a command for the executor to run in a container). Each step carries its cache key: blake3 over the
//! parent step's key, the step as written after expansion, and the content hash of what it copies.

use std::collections::BTreeMap;

use crate::dockerfile::{Command, Copy, Instruction, Problem, SecretMount, Stage};
use crate::layer::{Entry, Kind, entries_hash, step_key};

/// What an image says about running it, as the stage goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: String,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub shell: Vec<String>,
    pub exposed: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl Settings {
    fn env_map(&self) -> BTreeMap<String, String> {
        self.env.iter().cloned().collect()
    }

    fn set_env(&mut self, key: String, value: String) {
        match self.env.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.env.push((key, value)),
        }
    }

    /// The argv of a command: exec form as is, shell form through the stage's SHELL.
    fn argv(&self, command: &Command) -> Vec<String> {
        match command {
            Command::Exec(args) => args.clone(),
            Command::Shell(text) => {
                let mut argv = if self.shell.is_empty() {
                    vec!["/bin/sh".to_owned(), "-c".to_owned()]
                } else {
                    self.shell.clone()
                };
                argv.push(text.clone());
                argv
            }
        }
    }
}

/// A step that makes a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Files from the build context, at their destination paths (owners resolved by the executor from
    /// `chown` and the image's `/etc/passwd`).
    Copy {
        line: usize,
        key: blake3::Hash,
        entries: Vec<Entry>,
        chown: Option<String>,
    },
    /// `COPY --from`: files from an earlier stage or an image (`from`, as written), picked when the step runs
    /// from that image's files; `copy` has its sources, destination and owner expanded, `workdir` is where a
    /// relative destination goes.
    CopyFrom {
        line: usize,
        key: blake3::Hash,
        from: String,
        copy: Copy,
        workdir: String,
    },
    /// A command to run in a container of the image so far; its changes become the layer.
    Run {
        line: usize,
        key: blake3::Hash,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        workdir: String,
        user: String,
        secrets: Vec<SecretMount>,
    },
}

impl Step {
    pub fn key(&self) -> blake3::Hash {
        match self {
            Step::Copy { key, .. } | Step::CopyFrom { key, .. } | Step::Run { key, .. } => *key,
        }
    }
}

/// Joins `path` onto the working directory unless it is absolute; normalizes `.` and `..` (never above `/`).
fn resolve(workdir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{path}", if workdir.is_empty() { "/" } else { workdir })
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The context entries a COPY source names: a file, or everything under a folder (`.` is the whole context).
fn select<'a>(context: &'a [Entry], source: &str) -> Result<Vec<(&'a Entry, String)>, String> {
    let clean = resolve("/", source);
    if source.split('/').any(|p| p == "..") {
        return Err(format!("`{source}` is outside the build context"));
    }
    if source.contains(['*', '?', '[']) {
        return select_matching(context, source, clean.trim_start_matches('/'));
    }
    let rel = clean.trim_start_matches('/');
    let name = rel.rsplit('/').next().unwrap_or(rel).to_owned();
    // A folder (an image's `COPY --from` has folder entries; a build context has none) gives its contents,
    // or itself when it is empty.
    let exact = context.iter().find(|e| e.path == rel);
    if let Some(file) = exact.filter(|e| e.kind != Kind::Dir) {
        return Ok(vec![(file, name)]);
    }
    let prefix = if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}/")
    };
    let under: Vec<(&Entry, String)> = context
        .iter()
        .filter_map(|e| {
            e.path
                .strip_prefix(&prefix)
                .map(|inner| (e, inner.to_owned()))
        })
        .collect();
    match exact {
        _ if !under.is_empty() => Ok(under),
        Some(folder) => Ok(vec![(folder, name)]),
        None => Err(format!("`{source}` is not in the build context")),
    }
}

/// The context entries a wildcard source names (`*` and `?` stay within one path segment, as in Docker): each
/// matching file by its name, and the contents of each matching folder.
fn select_matching<'a>(
    context: &'a [Entry],
    source: &str,
    pattern: &str,
) -> Result<Vec<(&'a Entry, String)>, String> {
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("`{source}` is not a valid pattern: {e}"))?
        .compile_matcher();
    let mut picked = Vec::new();
    for entry in context {
        let parts: Vec<&str> = entry.path.split('/').collect();
        // The shortest matching ancestor (or the entry itself) decides where it lands; a matching folder
        // gives its contents, not itself.
        let hit = (1..=parts.len()).find(|n| matcher.is_match(parts[..*n].join("/")));
        if let Some(n) = hit.filter(|n| *n < parts.len() || entry.kind != Kind::Dir) {
            let inner = if n == parts.len() {
                parts[n - 1].to_owned()
            } else {
                parts[n..].join("/")
            };
            picked.push((entry, inner));
        }
    }
    if picked.is_empty() {
        return Err(format!("`{source}` matches nothing in the build context"));
    }
    Ok(picked)
}

pub(crate) fn copy_entries(
    copy: &Copy,
    context: &[Entry],
    settings: &Settings,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<Entry>, String> {
    let dest = crate::dockerfile::expand(&copy.dest, vars);
    let into_dir =
        dest.ends_with('/') || dest == "." || dest.ends_with("/.") || copy.sources.len() > 1;
    let dest = resolve(&settings.workdir, &dest);
    let mut out = Vec::new();
    for source in &copy.sources {
        let source = crate::dockerfile::expand(source, vars);
        let picked = select(context, &source)?;
        let single_file =
            picked.len() == 1 && picked[0].0.path == resolve("/", &source).trim_start_matches('/');
        // A folder copied with --chown: the destination folder is the owner's too (as BuildKit does), so
        // `WORKDIR /home/user/app` + `COPY --chown=user . /home/user/app` gives the user a writable app folder.
        let folder = dest.trim_matches('/').to_owned();
        if !single_file
            && copy.chown.is_some()
            && !folder.is_empty()
            && !out.iter().any(|e: &Entry| e.path == folder)
        {
            out.push(Entry {
                path: folder,
                kind: crate::layer::Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
        }
        for (entry, inner) in picked {
            let target = if single_file && !into_dir {
                dest.clone()
            } else {
                format!("{}/{inner}", dest.trim_end_matches('/'))
            };
            // ADD unpacks a local archive into the destination folder.
            if copy.add
                && let crate::layer::Kind::File(bytes) = &entry.kind
                && crate::layer::is_archive(bytes)
            {
                let into = dest.trim_matches('/');
                let unpacked = crate::layer::unpack(bytes, into)
                    .map_err(|e| format!("ADD {}: {e}", entry.path))?;
                let paths: std::collections::HashSet<&str> =
                    unpacked.iter().map(|u| u.path.as_str()).collect();
                out.retain(|e: &Entry| !paths.contains(e.path.as_str()));
                out.extend(unpacked);
                continue;
            }
            let mut e = entry.clone();
            e.path = target.trim_start_matches('/').to_owned();
            if let Some(mode) = copy.chmod {
                e.mode = mode;
            }
            out.push(e);
        }
    }
    Ok(out)
}

/// Plans `stage` on an image whose settings are `base`, with build arguments `args` (the Space's variables)
/// and the build context `context`. `parent` is the base image's key; `sources` has the keys of what
/// `COPY --from` may name (earlier stages by name and index, images). Every problem names its line.
pub fn plan(
    stage: &Stage,
    base: Settings,
    args: &BTreeMap<String, String>,
    context: &[Entry],
    (parent, sources): (blake3::Hash, &BTreeMap<String, blake3::Hash>),
) -> Result<(Vec<Step>, Settings), Problem> {
    let mut settings = base;
    let mut key = parent;
    let mut steps = Vec::new();
    // ARGs in scope: declared in the stage; their value is the build argument, else the default.
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    for (line, instruction) in &stage.instructions {
        let line = *line;
        let problem = |message: String| Problem { line, message };
        let mut vars = declared.clone();
        vars.extend(settings.env_map());
        let x = |s: &str| crate::dockerfile::expand(s, &vars);
        match instruction {
            Instruction::Arg { name, default } => {
                let value = args
                    .get(name)
                    .cloned()
                    .or_else(|| default.as_ref().map(|d| x(d)))
                    .unwrap_or_default();
                declared.insert(name.clone(), value);
            }
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    let v = x(v);
                    settings.set_env(k.clone(), v);
                }
            }
            Instruction::Workdir(dir) => settings.workdir = resolve(&settings.workdir, &x(dir)),
            Instruction::User(user) => settings.user = x(user),
            Instruction::Expose(ports) => settings.exposed.extend(ports.iter().map(|p| x(p))),
            Instruction::Label(pairs) => {
                for (k, v) in pairs {
                    settings.labels.insert(x(k), x(v));
                }
            }
            Instruction::Cmd(command) => settings.cmd = settings.argv(command),
            Instruction::Entrypoint(command) => {
                settings.entrypoint = settings.argv(command);
                // As in Docker, a new ENTRYPOINT clears a CMD inherited from the base.
                settings.cmd.clear();
            }
            Instruction::Shell(shell) => settings.shell = shell.clone(),
            Instruction::Copy(copy) if copy.from.is_some() => {
                let from = copy.from.clone().unwrap_or_default();
                let source = sources.get(&from.to_ascii_lowercase()).ok_or_else(|| {
                    problem(format!(
                        "COPY --from={from}: no earlier stage or image of that name"
                    ))
                })?;
                if copy.add {
                    return Err(problem("ADD has no --from; use COPY --from".into()));
                }
                let expanded = Copy {
                    sources: copy.sources.iter().map(|s| x(s)).collect(),
                    dest: x(&copy.dest),
                    chown: copy.chown.as_ref().map(|c| x(c)),
                    ..copy.clone()
                };
                let definition = format!(
                    "COPY --from={from} {:?} {} workdir={} chown={:?} chmod={:?}",
                    expanded.sources, expanded.dest, settings.workdir, expanded.chown, copy.chmod
                );
                key = step_key(Some(&key), &definition, &[*source]);
                steps.push(Step::CopyFrom {
                    line,
                    key,
                    from,
                    copy: expanded,
                    workdir: settings.workdir.clone(),
                });
            }
            Instruction::Copy(copy) => {
                let entries = copy_entries(copy, context, &settings, &vars).map_err(problem)?;
                let chown = copy.chown.as_ref().map(|c| x(c));
                let definition = format!(
                    "{} chown={} chmod={:?}",
                    if copy.add { "ADD" } else { "COPY" },
                    chown.as_deref().unwrap_or(""),
                    copy.chmod
                );
                key = step_key(Some(&key), &definition, &[entries_hash(&entries)]);
                steps.push(Step::Copy {
                    line,
                    key,
                    entries,
                    chown,
                });
            }
            Instruction::Run { command, secrets } => {
                let argv = settings.argv(command);
                // The environment the command sees (build arguments included) is part of what it does.
                let mut env = settings.env.clone();
                for (k, v) in &declared {
                    if !env.iter().any(|(e, _)| e == k) {
                        env.push((k.clone(), v.clone()));
                    }
                }
                let definition = format!(
                    "RUN {argv:?} env={env:?} workdir={} user={} secrets={:?}",
                    settings.workdir,
                    settings.user,
                    secrets
                        .iter()
                        .map(|s| (&s.id, &s.target))
                        .collect::<Vec<_>>()
                );
                key = step_key(Some(&key), &definition, &[]);
                steps.push(Step::Run {
                    line,
                    key,
                    argv,
                    env,
                    workdir: if settings.workdir.is_empty() {
                        "/".into()
                    } else {
                        settings.workdir.clone()
                    },
                    user: settings.user.clone(),
                    secrets: secrets.clone(),
                });
            }
        }
    }
    Ok((steps, settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;
    use crate::layer::Kind;

    fn file(path: &str, body: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File(body.as_bytes().to_vec()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn context() -> Vec<Entry> {
        vec![
            file("app.py", "print(1)"),
            file("requirements.txt", "gradio"),
            file("static/a.css", "a"),
            file("static/img/b.png", "b"),
        ]
    }

    fn planned(text: &str, args: &[(&str, &str)]) -> Result<(Vec<Step>, Settings), Problem> {
        let file = parse(text).unwrap();
        let args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        plan(
            &file.stages[0],
            Settings::default(),
            &args,
            &context(),
            (step_key(None, "FROM base", &[]), &BTreeMap::new()),
        )
    }

    #[test]
    fn settings_and_steps_follow_the_stage() {
        let (steps, settings) = planned(
            "FROM python\nARG MODEL=small\nENV HOME=/home/user SAME=$HOME\nENV APP=$HOME/app\nWORKDIR $APP\n\
             COPY --chown=1000 requirements.txt .\nRUN --mount=type=secret,id=HF_TOKEN pip install -r requirements.txt\n\
             COPY static /srv/\nCOPY app.py main.py\nUSER 1000\nEXPOSE 7860\nCMD [\"python\", \"main.py\", \"$MODEL\"]\n",
            &[("MODEL", "large")],
        )
        .unwrap();
        assert_eq!(settings.workdir, "/home/user/app");
        // As in Docker, one ENV instruction sees the values from before it.
        assert_eq!(
            settings.env,
            vec![
                ("HOME".into(), "/home/user".into()),
                ("SAME".into(), String::new()),
                ("APP".into(), "/home/user/app".into())
            ]
        );
        assert_eq!(
            settings.cmd,
            vec!["python", "main.py", "$MODEL"],
            "exec form is not expanded, as in Docker"
        );
        assert_eq!(
            (settings.user.as_str(), settings.exposed.clone()),
            ("1000", vec!["7860".to_owned()])
        );
        let Step::Copy { entries, chown, .. } = &steps[0] else {
            panic!()
        };
        assert_eq!(entries[0].path, "home/user/app/requirements.txt");
        assert_eq!(chown.as_deref(), Some("1000"));
        let Step::Run {
            argv,
            env,
            workdir,
            secrets,
            ..
        } = &steps[1]
        else {
            panic!()
        };
        assert_eq!(
            argv,
            &vec![
                "/bin/sh".to_owned(),
                "-c".into(),
                "pip install -r requirements.txt".into()
            ]
        );
        assert!(
            env.contains(&("MODEL".into(), "large".into())),
            "build arguments reach RUN: {env:?}"
        );
        assert_eq!(
            (workdir.as_str(), secrets[0].id.as_str()),
            ("/home/user/app", "HF_TOKEN")
        );
        let Step::Copy { entries, .. } = &steps[2] else {
            panic!()
        };
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["srv/a.css", "srv/img/b.png"]);
        let Step::Copy { entries, .. } = &steps[3] else {
            panic!()
        };
        assert_eq!(entries[0].path, "home/user/app/main.py");
    }

    #[test]
    fn keys_change_only_with_what_a_step_depends_on() {
        let text = "FROM python\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\nCOPY app.py .\n";
        let (a, _) = planned(text, &[]).unwrap();
        let (b, _) = planned(text, &[]).unwrap();
        assert_eq!(a, b, "the same stage and context plan the same keys");
        // A change to app.py changes only the last key.
        let parsed = parse(text).unwrap();
        let mut changed = context();
        changed[0] = file("app.py", "print(2)");
        let (c, _) = plan(
            &parsed.stages[0],
            Settings::default(),
            &BTreeMap::new(),
            &changed,
            (step_key(None, "FROM base", &[]), &BTreeMap::new()),
        )
        .unwrap();
        assert_eq!(a[0].key(), c[0].key());
        assert_eq!(a[1].key(), c[1].key());
        assert_ne!(a[2].key(), c[2].key());
        // A change to requirements.txt changes its step and every one after it.
        let mut reqs = context();
        reqs[1] = file("requirements.txt", "streamlit");
        let (d, _) = plan(
            &parsed.stages[0],
            Settings::default(),
            &BTreeMap::new(),
            &reqs,
            (step_key(None, "FROM base", &[]), &BTreeMap::new()),
        )
        .unwrap();
        assert!(a.iter().zip(&d).all(|(x, y)| x.key() != y.key()));
    }

    #[test]
    fn sources_outside_the_context_are_refused_with_their_line() {
        for (text, needle) in [
            ("FROM x\nCOPY ../secret /s\n", "outside the build context"),
            ("FROM x\nCOPY missing.txt /m\n", "not in the build context"),
            ("FROM x\nCOPY ../*.py /app/\n", "outside the build context"),
        ] {
            let err = planned(text, &[]).unwrap_err();
            assert_eq!(err.line, 2, "{text}");
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }

    fn copied(text: &str) -> Result<Vec<String>, Problem> {
        let (steps, _) = planned(text, &[])?;
        let Some(Step::Copy { entries, .. }) = steps.last() else {
            panic!("not a COPY")
        };
        let mut paths: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
        paths.sort();
        Ok(paths)
    }

    #[test]
    fn wildcards_pick_matching_files_and_the_contents_of_matching_folders() {
        assert_eq!(
            copied("FROM b\nCOPY *.txt /deps/\n").unwrap(),
            ["deps/requirements.txt"]
        );
        assert_eq!(
            copied("FROM b\nCOPY stat* /srv/\n").unwrap(),
            ["srv/a.css", "srv/img/b.png"]
        );
        assert_eq!(
            copied("FROM b\nCOPY static/*.css /css/\n").unwrap(),
            ["css/a.css"]
        );
        let err = copied("FROM b\nCOPY *.rs /x/\n").unwrap_err();
        assert!(err.message.contains("matches nothing"), "{}", err.message);
        assert_eq!(err.line, 2);
    }

    #[test]
    fn an_images_folders_give_their_contents_and_empty_ones_are_kept() {
        let dir = |path: &str| Entry {
            kind: Kind::Dir,
            ..file(path, "")
        };
        let tree = vec![
            dir("out"),
            file("out/a.txt", "a"),
            dir("out/empty"),
            dir("lone"),
        ];
        let copied_from = |line: &str| {
            let parsed = parse(&format!("FROM b\n{line}\n")).unwrap();
            let Instruction::Copy(copy) = &parsed.stages[0].instructions[0].1 else {
                panic!("not a COPY")
            };
            let entries =
                copy_entries(copy, &tree, &Settings::default(), &BTreeMap::new()).unwrap();
            let mut found: Vec<(String, bool)> = entries
                .into_iter()
                .map(|e| (e.path, e.kind == Kind::Dir))
                .collect();
            found.sort();
            found
        };
        let www = [
            ("www/a.txt".to_owned(), false),
            ("www/empty".to_owned(), true),
        ];
        assert_eq!(copied_from("COPY --from=x /out /www"), www);
        assert_eq!(copied_from("COPY --from=x /o* /www/"), www);
        assert_eq!(
            copied_from("COPY --from=x /lone /x"),
            [("x".to_owned(), true)]
        );
    }

    #[test]
    fn add_unpacks_a_local_archive_into_the_destination() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "dist/app.js", &b"js"[..])
            .unwrap();
        let archive = builder.into_inner().unwrap();
        let mut ctx = context();
        ctx.push(Entry {
            path: "site.tar".into(),
            kind: Kind::File(archive),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        let parsed = parse("FROM b\nADD site.tar /srv\nCOPY site.tar /raw/\n").unwrap();
        let (steps, _) = plan(
            &parsed.stages[0],
            Settings::default(),
            &BTreeMap::new(),
            &ctx,
            (step_key(None, "FROM base", &[]), &BTreeMap::new()),
        )
        .unwrap();
        let paths = |i: usize| match &steps[i] {
            Step::Copy { entries, .. } => {
                entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>()
            }
            _ => panic!("not a COPY"),
        };
        assert_eq!(paths(0), ["srv/dist/app.js"], "ADD unpacks");
        assert_eq!(paths(1), ["raw/site.tar"], "COPY does not");
    }
}
