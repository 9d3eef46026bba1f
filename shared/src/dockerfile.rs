//! Dockerfiles, parsed without IO: the instructions Space authors write (FROM with `AS`, RUN with secret
//! mounts, COPY/ADD with `--from` and `--chown`, ENV, ARG, WORKDIR, USER, EXPOSE, LABEL, CMD, ENTRYPOINT,
//! SHELL), each with the line it starts on. Every problem is reported with its line; an instruction this
//! builder does not run is an error naming it, never silently skipped. Variables (`$NAME`, `${NAME}`,
//! `${NAME:-default}`, `${NAME:+alt}`) are expanded by [`expand`] when the build reaches them.

use std::collections::BTreeMap;

/// A problem in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line the instruction starts on.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dockerfile:{}: {}", self.line, self.message)
    }
}

/// A command in shell form (run by the stage's SHELL) or exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// `RUN --mount=type=secret,id=NAME`: the Space secret `NAME` at `target` (default `/run/secrets/NAME`) for
/// that step only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub id: String,
    pub target: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// `ADD` (local tar archives are unpacked) rather than `COPY`.
    pub add: bool,
    /// `--from=STAGE` (a name or index).
    pub from: Option<String>,
    /// `--chown=USER[:GROUP]`.
    pub chown: Option<String>,
    /// `--chmod=MODE` (octal).
    pub chmod: Option<u32>,
    pub sources: Vec<String>,
    pub dest: String,
}

/// One instruction of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    Run {
        command: Command,
        secrets: Vec<SecretMount>,
    },
    Copy(Copy),
    Env(Vec<(String, String)>),
    Arg {
        name: String,
        default: Option<String>,
    },
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Label(Vec<(String, String)>),
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
}

/// A build stage: `FROM IMAGE [AS NAME]` and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub line: usize,
    /// The base as written (variables from the `ARG`s before the first `FROM` not yet expanded).
    pub from: String,
    pub name: Option<String>,
    pub instructions: Vec<(usize, Instruction)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM` (usable in `FROM` lines).
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
}

/// Instructions Docker knows that this builder refuses, with what to do instead.
const REFUSED: &[(&str, &str)] = &[
    (
        "HEALTHCHECK",
        "the Space's app port is health-checked by the cluster",
    ),
    (
        "VOLUME",
        "a Space's disk is ephemeral; use a persistent storage setting instead",
    ),
    ("ONBUILD", "it only affects images built FROM this one"),
    (
        "STOPSIGNAL",
        "Spaces are stopped with SIGTERM, then SIGKILL",
    ),
    ("MAINTAINER", "use LABEL maintainer=..."),
];

/// Parses a whole Dockerfile; every problem found is returned, each with its line.
pub fn parse(text: &str) -> Result<Dockerfile, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut file = Dockerfile::default();
    for (line, instruction) in logical_lines(text, &mut problems) {
        let (keyword, rest) = instruction
            .split_once(char::is_whitespace)
            .map_or((instruction.as_str(), ""), |(k, r)| (k, r.trim()));
        let keyword = keyword.to_ascii_uppercase();
        let problem = |message: String| Problem { line, message };
        if keyword == "FROM" {
            match parse_from(rest) {
                Ok((from, name)) => file.stages.push(Stage {
                    line,
                    from,
                    name,
                    instructions: Vec::new(),
                }),
                Err(m) => problems.push(problem(m)),
            }
            continue;
        }
        let parsed = parse_instruction(&keyword, rest);
        match (file.stages.last_mut(), parsed) {
            (_, Err(m)) => problems.push(problem(m)),
            (None, Ok(Instruction::Arg { name, default })) => {
                file.global_args.push((name, default))
            }
            (None, Ok(_)) => {
                problems.push(problem(format!("{keyword} before the first FROM")));
            }
            (Some(stage), Ok(i)) => stage.instructions.push((line, i)),
        }
    }
    if file.stages.is_empty() && problems.is_empty() {
        problems.push(Problem {
            line: 1,
            message: "no FROM: a Dockerfile starts from a base image".into(),
        });
    }
    let mut names = BTreeMap::new();
    for stage in &file.stages {
        if let Some(name) = &stage.name
            && let Some(first) = names.insert(name.to_ascii_lowercase(), stage.line)
        {
            problems.push(Problem {
                line: stage.line,
                message: format!("stage name `{name}` is already used on line {first}"),
            });
        }
    }
    if problems.is_empty() {
        Ok(file)
    } else {
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

/// Joins continued lines (ending in `\`), drops comments and blank lines; each logical line with its first line.
fn logical_lines(text: &str, problems: &mut Vec<Problem>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        if trimmed.starts_with('#') {
            // Comments inside a continued instruction are skipped too.
            continue;
        }
        if trimmed.contains("<<") && current.is_none() && heredoc_start(trimmed) {
            problems.push(Problem {
                line: n,
                message:
                    "heredocs (`<<EOF`) are not supported; put the script in a file and COPY it"
                        .into(),
            });
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        match current.as_mut() {
            Some((_, text)) => {
                text.push(' ');
                text.push_str(body.trim());
            }
            None if body.is_empty() && !continues => {}
            None => current = Some((n, body.trim().to_owned())),
        }
        if !continues && let Some(done) = current.take() {
            out.push(done);
        }
    }
    if let Some((line, text)) = current {
        problems.push(Problem {
            line,
            message: "the last instruction ends with `\\` and nothing after it".into(),
        });
        out.push((line, text));
    }
    out
}

fn heredoc_start(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or_default();
    matches!(first.to_ascii_uppercase().as_str(), "RUN" | "COPY" | "ADD")
        && line.split_whitespace().any(|w| {
            w.strip_prefix("<<")
                .map(|t| t.trim_start_matches('-').trim_matches(['"', '\'']))
                .is_some_and(|t| {
                    !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        })
}

fn parse_from(rest: &str) -> Result<(String, Option<String>), String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let words: Vec<&str> = match words.first() {
        Some(w) if w.starts_with("--platform=") => words[1..].to_vec(),
        _ => words,
    };
    match words.as_slice() {
        [image] => Ok(((*image).to_owned(), None)),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let valid = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid || name.is_empty() {
                return Err(format!("`{name}` is not a valid stage name"));
            }
            Ok(((*image).to_owned(), Some((*name).to_owned())))
        }
        _ => Err("FROM takes an image and optionally `AS name`".into()),
    }
}

fn parse_instruction(keyword: &str, rest: &str) -> Result<Instruction, String> {
    if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == keyword) {
        return Err(format!("{keyword} is not supported: {why}"));
    }
    let need = |what: &str| -> Result<(), String> {
        if rest.is_empty() {
            Err(format!("{keyword} needs {what}"))
        } else {
            Ok(())
        }
    };
    match keyword {
        "RUN" => {
            let (flags, rest) = take_flags(rest);
            let mut secrets = Vec::new();
            for (flag, value) in flags {
                match flag.as_str() {
                    "mount" => secrets.push(parse_secret_mount(&value)?),
                    "network" | "security" => {
                        return Err(format!("RUN --{flag} is not supported"));
                    }
                    other => return Err(format!("RUN has no flag --{other}")),
                }
            }
            if rest.is_empty() {
                return Err("RUN needs a command".into());
            }
            Ok(Instruction::Run {
                command: parse_command(rest)?,
                secrets,
            })
        }
        "COPY" | "ADD" => parse_copy(keyword == "ADD", rest).map(Instruction::Copy),
        "ENV" => {
            need("NAME=value")?;
            parse_pairs(rest, true).map(Instruction::Env)
        }
        "LABEL" => {
            need("key=value")?;
            parse_pairs(rest, false).map(Instruction::Label)
        }
        "ARG" => {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let [word] = words.as_slice() else {
                return Err("ARG takes one NAME or NAME=default".into());
            };
            let (name, default) = match word.split_once('=') {
                Some((n, d)) => (n, Some(unquote(d))),
                None => (*word, None),
            };
            check_name(name)?;
            Ok(Instruction::Arg {
                name: name.to_owned(),
                default,
            })
        }
        "WORKDIR" => {
            need("a directory")?;
            Ok(Instruction::Workdir(unquote(rest)))
        }
        "USER" => {
            need("a user")?;
            if rest.split_whitespace().count() != 1 {
                return Err("USER takes one USER[:GROUP]".into());
            }
            Ok(Instruction::User(rest.to_owned()))
        }
        "EXPOSE" => {
            need("a port")?;
            Ok(Instruction::Expose(
                rest.split_whitespace().map(str::to_owned).collect(),
            ))
        }
        "CMD" => {
            need("a command")?;
            parse_command(rest).map(Instruction::Cmd)
        }
        "ENTRYPOINT" => {
            need("a command")?;
            parse_command(rest).map(Instruction::Entrypoint)
        }
        "SHELL" => match parse_command(rest)? {
            Command::Exec(args) if !args.is_empty() => Ok(Instruction::Shell(args)),
            _ => Err("SHELL takes a JSON array, like [\"/bin/bash\", \"-c\"]".into()),
        },
        other => Err(format!("unknown instruction `{other}`")),
    }
}

/// Leading `--name=value` flags and what follows them.
fn take_flags(mut rest: &str) -> (Vec<(String, String)>, &str) {
    let mut flags = Vec::new();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let flag = &after[..end];
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        flags.push((name.to_owned(), value.to_owned()));
        rest = after[end..].trim_start();
    }
    (flags, rest)
}

fn parse_secret_mount(spec: &str) -> Result<SecretMount, String> {
    let mut fields = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, "true"));
        fields.insert(k.to_owned(), v.to_owned());
    }
    match fields.get("type").map(String::as_str) {
        Some("secret") => {}
        Some(other) => {
            return Err(format!(
                "RUN --mount=type={other} is not supported; only type=secret"
            ));
        }
        None => return Err("RUN --mount needs type=secret".into()),
    }
    let id = fields
        .get("id")
        .filter(|id| !id.is_empty())
        .ok_or("RUN --mount=type=secret needs id=NAME (the Space secret)")?
        .clone();
    for key in fields.keys() {
        if !matches!(key.as_str(), "type" | "id" | "target" | "dst" | "required") {
            return Err(format!("RUN --mount=type=secret has no option `{key}`"));
        }
    }
    let target = fields
        .get("target")
        .or_else(|| fields.get("dst"))
        .cloned()
        .unwrap_or_else(|| format!("/run/secrets/{id}"));
    Ok(SecretMount {
        required: fields.get("required").is_some_and(|v| v == "true"),
        id,
        target,
    })
}

fn parse_copy(add: bool, rest: &str) -> Result<Copy, String> {
    let keyword = if add { "ADD" } else { "COPY" };
    let (flags, rest) = take_flags(rest);
    let mut copy = Copy {
        add,
        from: None,
        chown: None,
        chmod: None,
        sources: Vec::new(),
        dest: String::new(),
    };
    for (flag, value) in flags {
        match flag.as_str() {
            "from" if !add => copy.from = Some(value),
            "chown" => copy.chown = Some(value),
            "chmod" => {
                copy.chmod = Some(
                    u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            format!("{keyword} --chmod=`{value}` is not an octal mode")
                        })?,
                );
            }
            "link" => {}
            other => return Err(format!("{keyword} has no flag --{other}")),
        }
    }
    let mut paths = match parse_command(rest)? {
        Command::Exec(paths) => paths,
        Command::Shell(text) => text.split_whitespace().map(str::to_owned).collect(),
    };
    if paths.len() < 2 {
        return Err(format!(
            "{keyword} needs at least one source and a destination"
        ));
    }
    copy.dest = paths.pop().unwrap_or_default();
    copy.sources = paths;
    if copy.sources.len() > 1 && !copy.dest.ends_with('/') {
        return Err(format!(
            "{keyword} with several sources needs a destination ending in `/`"
        ));
    }
    Ok(copy)
}

/// `["a", "b"]` is exec form; anything else is shell form.
fn parse_command(rest: &str) -> Result<Command, String> {
    if rest.starts_with('[') {
        if let Ok(args) = serde_json::from_str::<Vec<String>>(rest) {
            return Ok(Command::Exec(args));
        }
        if rest.ends_with(']') {
            return Err(format!(
                "`{rest}` looks like exec form but is not a JSON array of strings (use double quotes)"
            ));
        }
    }
    Ok(Command::Shell(rest.to_owned()))
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid variable name"))
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.replace(&format!("\\{q}"), &q.to_string());
        }
    }
    s.to_owned()
}

/// `K=V K2="v 2"` pairs; with `legacy`, the old `ENV NAME value with spaces` form is accepted too.
fn parse_pairs(rest: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let words = split_words(rest)?;
    if legacy && !words[0].contains('=') {
        let (name, value) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("`{rest}` needs a value: NAME=value"))?;
        check_name(name)?;
        return Ok(vec![(name.to_owned(), value.trim().to_owned())]);
    }
    words
        .iter()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("`{w}` is not key=value"))?;
            if legacy {
                check_name(k)?;
            }
            Ok((unquote(k), unquote(v)))
        })
        .collect()
}

/// Splits on whitespace outside quotes, keeping the quotes (for `unquote`).
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        match (quote, c) {
            _ if escaped => {
                word.push(c);
                escaped = false;
            }
            (_, '\\') => {
                word.push(c);
                escaped = true;
            }
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                word.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                word.push(c);
            }
            _ => word.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in `{s}`"));
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// Expands `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alt}` from `vars`; `\$` stays a `$`. An unknown
/// variable is empty, as in Docker.
pub fn expand(word: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let inner: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let (name, op) = match inner.find(":-").or_else(|| inner.find(":+")) {
                    Some(at) => (&inner[..at], Some((&inner[at..at + 2], &inner[at + 2..]))),
                    None => (inner.as_str(), None),
                };
                let value = vars.get(name).filter(|v| !v.is_empty());
                match (op, value) {
                    (Some((":-", default)), None) => out.push_str(default),
                    (Some((":+", alt)), Some(_)) => out.push_str(alt),
                    (Some((":+", _)), None) => {}
                    (_, value) => out.push_str(value.map_or("", String::as_str)),
                }
            }
            '$' if chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') =>
            {
                let mut name = String::new();
                while let Some(c) = chars
                    .peek()
                    .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
                {
                    name.push(*c);
                    chars.next();
                }
                out.push_str(vars.get(&name).map_or("", String::as_str));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_instructions_spaces_use() {
        let text = "# syntax=docker/dockerfile:1\n\
ARG PY=3.11\n\
FROM python:${PY}-slim AS deps\n\
RUN --mount=type=secret,id=HF_TOKEN,required \\\n\
    pip install \\\n\
      # a comment inside\n\
      -r requirements.txt\n\
\n\
FROM busybox\n\
ENV HOME=/home/user PATH=\"/home/user/.local/bin:$PATH\"\n\
ENV LEGACY a value\n\
WORKDIR $HOME/app\n\
COPY --from=deps --chown=user:user /usr/lib /usr/lib\n\
ADD --chmod=755 a.tar b.txt /opt/\n\
USER user\n\
EXPOSE 7860 7861/tcp\n\
LABEL org.opencontainers.image.title=\"My Space\"\n\
SHELL [\"/bin/sh\", \"-c\"]\n\
ENTRYPOINT [\"python\"]\n\
CMD app.py\n";
        let file = parse(text).unwrap();
        assert_eq!(file.global_args, vec![("PY".into(), Some("3.11".into()))]);
        assert_eq!(file.stages.len(), 2);
        let deps = &file.stages[0];
        assert_eq!(
            (deps.line, deps.from.as_str(), deps.name.as_deref()),
            (3, "python:${PY}-slim", Some("deps"))
        );
        let (line, Instruction::Run { command, secrets }) = &deps.instructions[0] else {
            panic!("{:?}", deps.instructions[0]);
        };
        assert_eq!(*line, 4);
        assert_eq!(
            command,
            &Command::Shell("pip install -r requirements.txt".into())
        );
        assert_eq!(
            secrets,
            &vec![SecretMount {
                id: "HF_TOKEN".into(),
                target: "/run/secrets/HF_TOKEN".into(),
                required: true
            }]
        );
        let app = &file.stages[1].instructions;
        assert_eq!(
            app[0],
            (
                10,
                Instruction::Env(vec![
                    ("HOME".into(), "/home/user".into()),
                    ("PATH".into(), "/home/user/.local/bin:$PATH".into())
                ])
            )
        );
        assert_eq!(
            app[1].1,
            Instruction::Env(vec![("LEGACY".into(), "a value".into())])
        );
        let Instruction::Copy(copy) = &app[3].1 else {
            panic!()
        };
        assert_eq!(
            (copy.from.as_deref(), copy.chown.as_deref()),
            (Some("deps"), Some("user:user"))
        );
        let Instruction::Copy(add) = &app[4].1 else {
            panic!()
        };
        assert!(
            add.add && add.chmod == Some(0o755) && add.sources.len() == 2 && add.dest == "/opt/"
        );
        assert_eq!(
            app[6].1,
            Instruction::Expose(vec!["7860".into(), "7861/tcp".into()])
        );
        assert_eq!(
            app[7].1,
            Instruction::Label(vec![(
                "org.opencontainers.image.title".into(),
                "My Space".into()
            )])
        );
        assert_eq!(
            app[9].1,
            Instruction::Entrypoint(Command::Exec(vec!["python".into()]))
        );
        assert_eq!(
            app[10],
            (20, Instruction::Cmd(Command::Shell("app.py".into())))
        );
    }

    #[test]
    fn every_problem_names_its_line() {
        let text = "RUN echo before\nFROM\nFROM busybox AS a\nFROM busybox AS a\nHEALTHCHECK CMD true\nFROBNICATE x\n\
RUN --mount=type=cache,target=/x make\nCOPY onlyone\nCMD [\"unterminated\"\nRUN <<EOF\nSHELL /bin/bash\nENV =x\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        let has = |line: usize, needle: &str| {
            assert!(
                lines.iter().any(|(l, m)| *l == line && m.contains(needle)),
                "no problem on line {line} with `{needle}`: {lines:?}"
            );
        };
        has(1, "before the first FROM");
        has(2, "FROM takes an image");
        has(4, "already used on line 3");
        has(5, "HEALTHCHECK is not supported");
        has(6, "unknown instruction `FROBNICATE`");
        has(7, "only type=secret");
        has(8, "at least one source");
        has(10, "heredocs");
        has(11, "SHELL takes a JSON array");
        has(12, "not a valid variable name");
        assert!(problems[0].to_string().starts_with("Dockerfile:1: "));
        assert_eq!(
            parse("# nothing\n").unwrap_err()[0].message,
            "no FROM: a Dockerfile starts from a base image"
        );
    }

    #[test]
    fn the_docker_example_parses() {
        let file = parse(include_str!("../../ops/examples/docker-hello/Dockerfile")).unwrap();
        assert_eq!(file.stages.len(), 1);
        assert!(
            file.stages[0]
                .instructions
                .iter()
                .any(|(_, i)| matches!(i, Instruction::Cmd(Command::Exec(_))))
        );
    }

    #[test]
    fn expands_variables_as_docker_does() {
        let vars = BTreeMap::from([
            ("A".to_owned(), "x".to_owned()),
            ("E".to_owned(), String::new()),
        ]);
        assert_eq!(
            expand(
                "$A/${A}/${B:-d}/${A:+alt}/${E:-empty}/${B:+no}/\\$A/$",
                &vars
            ),
            "x/x/d/alt/empty//$A/$"
        );
        assert_eq!(expand("pre${A}post $9", &vars), "prexpost $9");
    }
}
