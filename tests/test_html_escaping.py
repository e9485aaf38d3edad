"""HTML pages escape what they show: file, label and class names are text, not markup."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from catdog.db.models import Base, Image, ModelVersion, Prediction
from catdog.ops.report import write_report
from catdog.training.explore import explore
from training_data import make_dataset

#: Markup a hostile file, folder or label name could smuggle into a page.
SCRIPT = "<script>alert(1)</script>"
#: The characters an attribute value or entity must also survive.
QUOTES = "\"&'"


class PageParser(HTMLParser):
    """The start tags and the text (entities decoded) of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def shows_as_text(parsed: PageParser, value: str) -> bool:
    """True when ``value`` is one piece of the page's text, not split by markup."""
    return any(value in chunk for chunk in parsed.text)


def test_the_results_report_escapes_file_names_labels_and_reasons(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A hostile path, label, model version and failure reason show as text, never as a tag."""
    hostile = f"{SCRIPT}{QUOTES}"
    engine = create_engine(sqlite_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        version = ModelVersion(version=hostile, file="v.keras", sha256="0" * 64, classes=["a"])
        labeled = Image(store=str(tmp_path), path=f"{hostile}.jpg", size=1, mtime=0.0)
        failed = Image(store=str(tmp_path), path=f"broken {hostile}.jpg", size=1, mtime=0.0)
        session.add_all([version, labeled, failed])
        session.flush()
        session.add_all(
            [
                Prediction(
                    image_id=labeled.id, model_version_id=version.id, label=hostile, confidence=0.5
                ),
                Prediction(image_id=failed.id, model_version_id=version.id, error=hostile),
            ]
        )
        session.commit()
        write_report(session, tmp_path / "report")
    engine.dispose()

    page = (tmp_path / "report" / "index.html").read_text()
    parsed = parse(page)
    assert SCRIPT not in page and "script" not in parsed.tags
    for shown in (
        hostile,
        str(tmp_path / f"{hostile}.jpg"),
        str(tmp_path / f"broken {hostile}.jpg"),
    ):
        assert shows_as_text(parsed, shown), shown


def test_the_exploration_report_escapes_class_names_and_file_names(tmp_path: Path) -> None:
    """A class folder and a file whose names spell a script tag show as text, never as a tag."""
    # A name holds no "/": the folder opens the tag and the file inside it closes it.
    hostile_class = f"{QUOTES}<script>alert(1)<"
    root = make_dataset(tmp_path / "d", per_class=3)
    (root / "dog").rename(root / hostile_class)
    (root / hostile_class / "script>.jpg").write_bytes(b"not a jpeg")
    hostile_path = f"{QUOTES}{SCRIPT}.jpg"
    assert (root / hostile_path).is_file()

    page = explore(root, tmp_path / "out").read_text()
    parsed = parse(page)
    assert "<script>" not in page and "script" not in parsed.tags
    assert shows_as_text(parsed, hostile_class)  # the class table and the samples heading
    assert shows_as_text(parsed, hostile_path)  # the unreadable files table
    assert sum(hostile_class in chunk for chunk in parsed.text) >= 2
