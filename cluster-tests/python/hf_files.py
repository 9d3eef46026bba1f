"""The official huggingface_hub client on repo files: uploads, commits with deletions, downloads, listings and
revisions on Space, model and dataset repos, plus refusals (stale parent, unknown revision or file, bad paths,
malformed commit bodies) that must leave the repo as it was.

Environment: HF_ENDPOINT, SPACEDOCK_ADMIN_TOKEN, HF_HUB_DISABLE_XET=1 (this server speaks LFS, not Xet).
Prints one line per check and exits non-zero at the first failure.
"""

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import huggingface_hub
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from checks import PASSED, check, on_every_response

ENDPOINT = os.environ["HF_ENDPOINT"].rstrip("/")
TOKEN = os.environ["SPACEDOCK_ADMIN_TOKEN"]
SECRET = "hf_QwErTyUiOpAsDfGhJkLzXcVbNm0123456789"
WARNINGS = []


def record(response):
    warning = response.headers.get("x-hf-warning")
    if warning:
        WARNINGS.append(warning)


on_every_response(record)


def raw(method, path, body, content_type):
    request = urllib.request.Request(
        ENDPOINT + path,
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
        method=method,
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raises(kind, f):
    try:
        f()
    except kind as e:
        return e
    return None


api = HfApi(endpoint=ENDPOINT, token=TOKEN)
work = Path(tempfile.mkdtemp())
folder = work / "folder"
for name, text in {
    "index.html": "<h1>hello</h1>",
    "src/a.txt": "a",
    "src/b.txt": "b",
    "nested/deep/c.txt": "c",
}.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)

for repo_type in ["space", "model", "dataset"]:
    repo_id = f"admin/files-{repo_type}"
    extra = {"space_sdk": "static"} if repo_type == "space" else {}
    api.create_repo(repo_id, repo_type=repo_type, **extra)
    t = repo_type
    readme = b"---\ntitle: Files\nsdk: static\n---\n# Files\n" if t == "space" else b"# Files\n"
    first = api.upload_file(path_or_fileobj=readme, path_in_repo="README.md", repo_id=repo_id, repo_type=t)
    check(f"{t}: upload_file gives a commit", len(first.oid) == 40, first)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=t)
    expected = {"README.md", "index.html", "src/a.txt", "src/b.txt", "nested/deep/c.txt"}
    files = set(api.list_repo_files(repo_id, repo_type=t))
    check(f"{t}: list_repo_files after upload_folder", files == expected, files)

    head = api.repo_info(repo_id, repo_type=t).sha
    info = api.create_commit(
        repo_id,
        repo_type=t,
        operations=[
            CommitOperationDelete(path_in_repo="src/b.txt"),
            CommitOperationDelete(path_in_repo="nested/", is_folder=True),
            CommitOperationAdd(path_in_repo="new.txt", path_or_fileobj=b"new"),
        ],
        commit_message="delete and add",
        parent_commit=head,
    )
    sha = api.repo_info(repo_id, repo_type=t).sha
    check(f"{t}: repo_info sha is the new commit", sha == info.oid, (sha, info.oid))
    files = set(api.list_repo_files(repo_id, repo_type=t))
    check(f"{t}: deletions and additions", files == {"README.md", "index.html", "src/a.txt", "new.txt"}, files)
    tree = {e.path: type(e).__name__ for e in api.list_repo_tree(repo_id, repo_type=t)}
    check(f"{t}: top-level tree", tree.get("src") == "RepoFolder" and tree.get("new.txt") == "RepoFile", tree)
    check(f"{t}: file_exists", api.file_exists(repo_id, "src/a.txt", repo_type=t))
    check(f"{t}: file_exists on a missing file", not api.file_exists(repo_id, "src/b.txt", repo_type=t))

    path = hf_hub_download(repo_id, "src/a.txt", repo_type=t, cache_dir=work / f"cache-{t}")
    check(f"{t}: hf_hub_download", Path(path).read_text() == "a")
    old = hf_hub_download(repo_id, "src/b.txt", repo_type=t, revision=head, cache_dir=work / f"cache-{t}")
    check(f"{t}: hf_hub_download at an older revision", Path(old).read_text() == "b")
    local = snapshot_download(repo_id, repo_type=t, local_dir=work / f"snap-{t}")
    got = {str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file() and ".cache" not in p.parts}
    check(f"{t}: snapshot_download", got == files, got)

    stale = raises(
        HfHubHTTPError,
        lambda: api.create_commit(
            repo_id,
            repo_type=t,
            operations=[CommitOperationAdd(path_in_repo="x.txt", path_or_fileobj=b"x")],
            commit_message="stale",
            parent_commit=head,
        ),
    )
    check(f"{t}: a stale parentCommit conflicts", stale is not None and stale.response.status_code == 409, stale)
    missing = raises(EntryNotFoundError, lambda: hf_hub_download(repo_id, "nope.txt", repo_type=t, cache_dir=work / "c2"))
    check(f"{t}: a missing file is EntryNotFound", missing is not None)
    unknown = raises(RevisionNotFoundError, lambda: api.list_repo_files(repo_id, repo_type=t, revision="no-such-branch"))
    check(f"{t}: an unknown revision is RevisionNotFound", unknown is not None)
    gone = raises(
        HfHubHTTPError,
        lambda: api.delete_file("not-there.txt", repo_id, repo_type=t),
    )
    check(f"{t}: deleting a missing file fails", gone is not None and gone.response.status_code == 404, gone)
    refs = api.list_repo_refs(repo_id, repo_type=t)
    check(f"{t}: refs", [b.name for b in refs.branches] == ["main"] and refs.branches[0].target_commit == sha, refs)
    commits = api.list_repo_commits(repo_id, repo_type=t)
    check(f"{t}: history", [c.commit_id for c in commits][0] == sha and len(commits) == 3, commits)
    expanded = {e.path: e for e in api.list_repo_tree(repo_id, repo_type=t, recursive=True, expand=True)}
    # new.txt came with the last commit, src/a.txt with upload_folder's, README.md with the first.
    ids = [c.commit_id for c in commits]
    last = {path: expanded[path].last_commit.oid for path in ["new.txt", "src/a.txt", "README.md"]}
    check(f"{t}: tree entries' last commits", last == {"new.txt": ids[0], "src/a.txt": ids[1], "README.md": ids[2]}, last)
    check(f"{t}: the repo is as it was after the refusals", api.repo_info(repo_id, repo_type=t).sha == sha)

# auth_check: the caller may read and write its own repo; a repo that is not there is RepositoryNotFound.
api.auth_check("admin/files-model")
api.auth_check("admin/files-model", write=True)
check("auth_check on a missing repo", raises(RepositoryNotFoundError, lambda: api.auth_check("admin/nope")) is not None)

# A .gitignore among the files decides what is left out.
ignoring = work / "ignoring"
ignoring.mkdir()
(ignoring / ".gitignore").write_text("*.log\n")
(ignoring / "debug.log").write_text("noise")
(ignoring / "kept.txt").write_text("kept")
api.upload_folder(folder_path=ignoring, repo_id="admin/files-dataset", repo_type="dataset")
files = set(api.list_repo_files("admin/files-dataset", repo_type="dataset"))
check("gitignore: ignored files stay out", "kept.txt" in files and "debug.log" not in files, files)

# A static Space runs from its files at once; a Gradio one waits for a build, or says what is missing.
runtime = api.get_space_runtime("admin/files-space")
check("space: a static commit is RUNNING", runtime.stage == "RUNNING", runtime)
api.upload_file(path_or_fileobj=b"---\nsdk: gradio\n---\n", path_in_repo="README.md", repo_id="admin/files-space", repo_type="space")
runtime = api.get_space_runtime("admin/files-space")
check("space: a gradio README without app.py is NO_APP_FILE", runtime.stage == "NO_APP_FILE" and "app.py" in (runtime.raw.get("errorMessage") or ""), runtime.raw)
api.upload_file(path_or_fileobj=b"import gradio\n", path_in_repo="app.py", repo_id="admin/files-space", repo_type="space")
runtime = api.get_space_runtime("admin/files-space")
check("space: with app.py it is BUILDING", runtime.stage == "BUILDING", runtime.raw)

# A likely credential is warned about through X-HF-Warning, without the value.
WARNINGS.clear()
api.upload_file(path_or_fileobj=f"TOKEN = '{SECRET}'\n".encode(), path_in_repo="conf.py", repo_id="admin/files-model")
check("a credential is warned about", any("conf.py:1" in w for w in WARNINGS), WARNINGS)
check("the warning does not repeat it", not any(SECRET in w for w in WARNINGS), WARNINGS)

# A file over 10 MiB goes through LFS: preupload says so, the batch API hands out signed URLs, the commit names
# the object; downloads get the bytes back and listings show the LFS object.
big = os.urandom(12 * 1024 * 1024)
oid = hashlib.sha256(big).hexdigest()
api.upload_file(path_or_fileobj=big, path_in_repo="weights.bin", repo_id="admin/files-model")
path = hf_hub_download("admin/files-model", "weights.bin", cache_dir=work / "cache-lfs")
check("LFS: hf_hub_download gives the bytes back", Path(path).read_bytes() == big)
entry = [e for e in api.list_repo_tree("admin/files-model") if e.path == "weights.bin"][0]
check("LFS: the tree shows the LFS object", entry.lfs is not None and entry.lfs.sha256 == oid and entry.size == len(big), entry)
info = api.get_paths_info("admin/files-model", ["weights.bin"])[0]
check("LFS: paths-info shows it too", info.lfs is not None and info.lfs.sha256 == oid, info)
files = api.model_info("admin/files-model", files_metadata=True).siblings
sib = [f for f in files if f.rfilename == "weights.bin"][0]
check("LFS: siblings carry it", sib.lfs is not None and sib.lfs.sha256 == oid, sib)
api.upload_file(path_or_fileobj=big, path_in_repo="copy.bin", repo_id="admin/files-model")
check("LFS: the same object again needs no upload", "copy.bin" in api.list_repo_files("admin/files-model"))
status, text = raw(
    "POST",
    "/api/datasets/admin/files-dataset/commit/main",
    (json.dumps({"key": "header", "value": {"summary": "borrow"}}) + "\n"
     + json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(big)}}) + "\n").encode(),
    "application/x-ndjson",
)
check("LFS: another repo's object cannot be committed by its id alone", status == 400 and "not uploaded" in text, (status, text))

# Range requests on resolve, for regular and LFS files.
for path, whole in [("src/a.txt", b"a"), ("weights.bin", big)]:
    request = urllib.request.Request(
        ENDPOINT + "/admin/files-model/resolve/main/" + path,
        headers={"Authorization": f"Bearer {TOKEN}", "Range": f"bytes=0-{min(len(whole), 1000) - 1}"},
    )
    with urllib.request.urlopen(request) as response:
        part = response.read()
        check(
            f"range: {path}",
            response.status == 206
            and part == whole[: min(len(whole), 1000)]
            and response.headers["content-range"] == f"bytes 0-{min(len(whole), 1000) - 1}/{len(whole)}",
            (response.status, dict(response.headers)),
        )

# A cut LFS download resumes with a Range on the batch API's download URL, as git-lfs does.
status, text = raw(
    "POST",
    "/admin/files-model.git/info/lfs/objects/batch",
    json.dumps({"operation": "download", "objects": [{"oid": oid, "size": len(big)}]}).encode(),
    "application/vnd.git-lfs+json",
)
href = json.loads(text)["objects"][0]["actions"]["download"]["href"]
with urllib.request.urlopen(urllib.request.Request(href, headers={"Range": f"bytes={len(big) - 100}-"})) as response:
    tail = response.read()
    check("LFS: a download resumes from an offset", response.status == 206 and tail == big[-100:], response.status)

# The tree pages through Link headers, each next URL carrying the cursor.
url = ENDPOINT + "/api/models/admin/files-model/tree/main?recursive=true&limit=2"
paged = []
while url:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as response:
        page = json.loads(response.read())
        check("tree page size", len(page) <= 2, page)
        paged.extend(e["path"] for e in page)
        link = response.headers.get("link")
        url = link.split(">")[0].lstrip("<") if link else None
everything = [e.path for e in api.list_repo_tree("admin/files-model", recursive=True)]
check("tree pages add up to the whole tree", paged == everything and len(paged) > 4, (paged, everything))

# A missing file's 404 says EntryNotFound and which commit it looked in (clients cache the absence by commit).
request = urllib.request.Request(
    ENDPOINT + "/admin/files-model/resolve/main/no-such-file.txt",
    headers={"Authorization": f"Bearer {TOKEN}"},
    method="HEAD",
)
try:
    urllib.request.urlopen(request)
    check("a missing file is a 404", False)
except urllib.error.HTTPError as e:
    head = api.repo_info("admin/files-model").sha
    check(
        "a missing file's 404 carries X-Repo-Commit",
        e.code == 404 and e.headers.get("x-error-code") == "EntryNotFound" and e.headers.get("x-repo-commit") == head,
        dict(e.headers),
    )

# LFS bytes that do not hash to their oid are refused, and verify says the object is not there.
wrong_oid = hashlib.sha256(b"the real bytes").hexdigest()
status, text = raw(
    "POST",
    "/admin/files-model.git/info/lfs/objects/batch",
    json.dumps({"operation": "upload", "objects": [{"oid": wrong_oid, "size": 14}]}).encode(),
    "application/vnd.git-lfs+json",
)
actions = json.loads(text)["objects"][0]["actions"]
put = urllib.request.Request(actions["upload"]["href"], data=b"other bytes!!!", method="PUT")
try:
    urllib.request.urlopen(put)
    check("LFS: wrong bytes are refused", False)
except urllib.error.HTTPError as e:
    check("LFS: wrong bytes are refused", e.code == 400 and "do not match" in e.read().decode(), e.code)
verify = urllib.request.Request(
    actions["verify"]["href"], data=json.dumps({"oid": wrong_oid, "size": 14}).encode(), method="POST"
)
try:
    urllib.request.urlopen(verify)
    check("LFS: verify refuses an object never stored", False)
except urllib.error.HTTPError as e:
    check("LFS: verify refuses an object never stored", e.code == 404, e.code)

# Bad input: each refused with a message naming what is wrong, the repo unchanged.
before = api.repo_info("admin/files-model").sha
ndjson = "application/x-ndjson"
header = json.dumps({"key": "header", "value": {"summary": "bad"}})
for name, body, needle in [
    ("malformed NDJSON", header + "\n{not json\n", "line 2"),
    ("a path escaping the repo", header + "\n" + json.dumps({"key": "file", "value": {"path": "../x", "content": "eA==", "encoding": "base64"}}) + "\n", "../x"),
    ("an absolute path", header + "\n" + json.dumps({"key": "file", "value": {"path": "/etc/x", "content": "eA==", "encoding": "base64"}}) + "\n", "/etc/x"),
    ("a path inside .git", header + "\n" + json.dumps({"key": "file", "value": {"path": ".git/config", "content": "eA==", "encoding": "base64"}}) + "\n", ".git"),
    ("an LFS file never uploaded", header + "\n" + json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "ab" * 32, "size": 3}}) + "\n", "not uploaded"),
]:
    status, text = raw("POST", "/api/models/admin/files-model/commit/main", body.encode(), ndjson)
    check(f"refused: {name}", status == 400 and needle in text, (status, text))
check("the repo is unchanged after bad input", api.repo_info("admin/files-model").sha == before)

print(f"{PASSED[0]} checks passed with huggingface_hub {huggingface_hub.__version__}")
