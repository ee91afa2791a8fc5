"""A local stand-in for the Hugging Face Hub API, for pushing without a network: repositories are
folders `root/<owner>/<name>`, and the calls that `push_to_hub`, `upload_folder` and
`ModelCard.load` make (`HfApi.create_repo`, `HfApi.create_commit`, `HfApi.upload_folder`, the card
download) read and write them. `as_hf_cache` lays a repository out as the hub cache does, so that
`from_pretrained("<owner>/<name>")` and `hf_hub_download` find it offline."""

import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.repocard
from huggingface_hub import CommitOperationAdd, HfApi, RepoUrl
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

FAKE_COMMIT = "0" * 39 + "1"


class LocalHub:
    def __init__(self, root):
        self.root = Path(root)
        self.commits = []  # (repo_id, commit message, sorted paths written)

    def repo(self, repo_id: str) -> Path:
        owner, name = repo_id.split("/")
        return self.root / owner / name

    def files(self, repo_id: str) -> set[str]:
        folder = self.repo(repo_id)
        return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}

    def install(self, monkeypatch) -> "LocalHub":
        hub = self

        def create_repo(api, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **_):
            folder = hub.repo(repo_id)
            if folder.exists() and not exist_ok:
                raise FileExistsError(f"{repo_id} exists")
            folder.mkdir(parents=True, exist_ok=True)
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_commit(api, repo_id, operations, *, commit_message, **_):
            folder = hub._existing(repo_id)
            written = []
            for operation in operations:
                if not isinstance(operation, CommitOperationAdd):
                    raise NotImplementedError(f"the local hub only adds files, got {operation!r}")
                target = folder / operation.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                source = operation.path_or_fileobj
                if isinstance(source, (str, Path)):
                    shutil.copyfile(source, target)
                else:
                    target.write_bytes(source if isinstance(source, bytes) else source.read())
                written.append(operation.path_in_repo)
            hub.commits.append((repo_id, commit_message, sorted(written)))

        def upload_folder(api, *, repo_id, folder_path, commit_message=None, **_):
            folder = Path(folder_path)
            operations = [CommitOperationAdd(path_in_repo=str(path.relative_to(folder)), path_or_fileobj=str(path))
                          for path in sorted(folder.rglob("*")) if path.is_file()]
            create_commit(api, repo_id, operations, commit_message=commit_message or "Upload folder")

        def download(repo_id, filename, **_):
            path = hub._existing(repo_id) / filename
            if not path.is_file():
                raise EntryNotFoundError(f"{filename} is not in {repo_id}")
            return str(path)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", download)
        return self

    def _existing(self, repo_id: str) -> Path:
        folder = self.repo(repo_id)
        if not folder.is_dir():
            raise RepositoryNotFoundError(f"{repo_id} does not exist")
        return folder

    def as_hf_cache(self, repo_id: str, cache_dir) -> Path:
        """The repository copied into a hub cache (`HF_HUB_CACHE`) as its one commit on main."""
        owner, name = repo_id.split("/")
        entry = Path(cache_dir) / f"models--{owner}--{name}"
        (entry / "refs").mkdir(parents=True, exist_ok=True)
        (entry / "refs" / "main").write_text(FAKE_COMMIT)
        shutil.copytree(self.repo(repo_id), entry / "snapshots" / FAKE_COMMIT, dirs_exist_ok=True)
        return Path(cache_dir)
