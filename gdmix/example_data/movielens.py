"""MovieLens 100K in the GDMix data contract, as in GDMix's MovieLens example.

:func:`build_movielens_100k` writes ``out/train/`` and ``out/validation/``: one row per rating,
``uid`` = 0-based row number in the ratings file, ``label`` = 1.0 if rating > 3 else 0.0,
``user_id``/``movie_id`` (int64), two text columns and three feature bags.

Text, for a DeText (deep text) fixed effect:

* ``title``: the movie title as GroupLens/RecBole write it, minus the trailing year, e.g.
  ``Misérables, Les`` for ``Misérables, Les (1995)`` (GroupLens's ``u.item`` is latin-1; the
  text is decoded to str). GDMix's DeText example lower-cased titles and stripped punctuation
  when it built the data; here the raw title is kept because our DeText model normalises text
  inside its graph (case folding, non-letters as separators), so training and serving see the
  same normalisation and the data needs none. A title that would be empty is ``unknown``.
* ``user_text``: the user's features as words, ``age 24 gender male occupation technician``
  (for a DeText ``user_text`` field; GDMix's example had no user text).

Feature bags:

* user features (24 possible): ``("age", "", age/100)``, ``("gender", "M"|"F", 1)``,
  ``("occupation", <one of 21>, 1)``;
* movie features (20 possible): ``("genre", <one of 19 GroupLens genres>, 1)`` per genre flag and
  ``("release_year", "", year/2000)`` (absent when the year is unknown, e.g. movie 267);
* ``global`` = user + movie features; ``per_user`` = movie features (the per-user model's
  features); ``per_movie`` = user features. Zero values are dropped. Within a bag the order is
  fixed: age, gender, occupation, genres in GroupLens order, release_year.

The split is seeded (``np.random.default_rng(seed).random(n) < 0.8`` over ratings in file
order) instead of GDMix's unseeded one.

An optional held-out test split (``test_fraction > 0``, written to ``out/test/``) is drawn
first, with ``np.random.default_rng(test_seed)`` (``test_seed`` defaults to ``seed``):
``random(n) < test_fraction``. The other rows are then split by ``seed``, keeping validation at
20% of *all* rows (train is 80% minus the test share): a row that is not a test row is a
training row when ``default_rng(seed).random(n) < (0.8 - test_fraction) / (1 - test_fraction)``.
A fixed ``test_seed`` gives the same test rows whatever ``seed``, so a benchmark can tune on
validation over several seeds without ever touching the test rows. With ``test_fraction == 0``
the split is exactly the two-way one above.

Sources: a GroupLens ``ml-100k`` folder (``u.data``, ``u.user``, ``u.item``) or a zip of it; a
folder with RecBole's atomic files (``ml-100k.inter``/``.user``/``.item``); or the RecBole wheel
(a zip holding ``recbole/dataset_example/ml-100k/``), read in place. Without a source the RecBole
1.2.1 wheel is fetched with ``pip download`` (never installed) into a cache folder.

Release year: RecBole's ``release_year`` was taken from the year in the title, e.g.
``Kolya (1996)``, whose GroupLens release date is 24-Jan-1997. So that every source gives the same
dataset, the year of a GroupLens movie is the year in its title's ``(yyyy)`` suffix, and the year
of its release date only when the title has none. (GDMix's script used the release date; the two
differ for a minority of movies, by a year or so.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from gdmix.errors import DataError, GdmixError
from gdmix.io import fs
from gdmix.io.contract import FEATURE_BAG_TYPE, FEATURE_STRUCT, write_dataset

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k"

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)
GENDERS = ("M", "F")
#: Every (name, term) a user can have: 24.
USER_FEATURES = (
    [("age", "")] + [("gender", g) for g in GENDERS] + [("occupation", o) for o in OCCUPATIONS]
)
#: Every (name, term) a movie can have: 20.
MOVIE_FEATURES = [("genre", g) for g in GENRES] + [("release_year", "")]
#: Features of each bag.
BAG_FEATURES = {
    "global": USER_FEATURES + MOVIE_FEATURES,
    "per_user": MOVIE_FEATURES,
    "per_movie": USER_FEATURES,
}
TRAIN_FRACTION = 0.8

_GROUPLENS_FILES = ("u.data", "u.user", "u.item")
_RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
_TITLE_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_LAST_GROUP = re.compile(r"^(.*)\(([^()]*)\)\s*$", re.DOTALL)
_YEAR = re.compile(r"\d{4}")
_RECBOLE_UNKNOWN = ("unkonwn", "unknown", "")  # RecBole spells its missing title/year "unkonwn"
UNKNOWN_TITLE = "unknown"  # GroupLens's title of movie 267; also given to any empty title
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


# sources


class _Files:
    """The three files of one source, read from a folder or a zip archive."""

    def __init__(self, kind: str, names: dict[str, str], archive: str | None, description: str):
        self.kind = kind  # "grouplens" or "recbole"
        self.names = names  # logical name -> path (folder) or member (zip)
        self.archive = archive
        self.description = description

    def where(self, logical: str) -> str:
        if self.archive is None:
            return self.names[logical]
        return f"{self.archive}!{self.names[logical]}"

    def read_text(self, logical: str) -> str:
        where = self.where(logical)
        try:
            if self.archive is None:
                raw = Path(self.names[logical]).read_bytes()
            else:
                with zipfile.ZipFile(self.archive) as archive:
                    raw = archive.read(self.names[logical])
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read MovieLens file ({exc})", path=where) from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")  # GroupLens ships u.item in ISO-8859-1


def _open_source(source: str) -> _Files:
    path = Path(source).expanduser()
    if not path.exists():
        raise GdmixError(f"MovieLens source {source} does not exist")
    if path.is_file():
        return _open_archive(path)
    candidates = [path, path / "ml-100k", path / RECBOLE_MEMBER_DIR]
    for kind, files in (("grouplens", _GROUPLENS_FILES), ("recbole", _RECBOLE_FILES)):
        for folder in candidates:
            if (folder / files[0]).is_file():
                names = {}
                for name in files:
                    if not (folder / name).is_file():
                        raise DataError(
                            f"missing MovieLens file (a {kind} ml-100k folder needs "
                            f"{', '.join(files)})",
                            path=str(folder / name),
                        )
                    names[name] = str(folder / name)
                return _Files(kind, names, None, f"{kind} folder {folder}")
    raise GdmixError(
        f"MovieLens source {source} holds neither GroupLens files ({', '.join(_GROUPLENS_FILES)}) "
        f"nor RecBole atomic files ({', '.join(_RECBOLE_FILES)})"
    )


def _open_archive(path: Path) -> _Files:
    if not zipfile.is_zipfile(path):
        raise GdmixError(
            f"MovieLens source {path} is a file but not a zip archive (give a GroupLens ml-100k "
            f"folder or zip, a RecBole atomic-file folder, or the {RECBOLE_WHEEL} wheel)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
    except (OSError, zipfile.BadZipFile) as exc:
        raise GdmixError(f"cannot open MovieLens archive {path} ({exc})") from None
    by_folder: dict[str, set[str]] = {}
    for member in members:
        folder, _, base = member.rpartition("/")
        by_folder.setdefault(folder, set()).add(base)
    for kind, files in (("grouplens", _GROUPLENS_FILES), ("recbole", _RECBOLE_FILES)):
        folders = sorted(f for f, bases in by_folder.items() if files[0] in bases)
        if not folders:
            continue
        # prefer RecBole's own example folder, then the shallowest
        folders.sort(key=lambda f: (f != RECBOLE_MEMBER_DIR, f.count("/"), f))
        folder = folders[0]
        prefix = f"{folder}/" if folder else ""
        names = {}
        for name in files:
            if name not in by_folder[folder]:
                raise DataError(
                    f"missing MovieLens file in archive (a {kind} ml-100k set needs "
                    f"{', '.join(files)})",
                    path=f"{path}!{prefix}{name}",
                )
            names[name] = prefix + name
        return _Files(kind, names, str(path), f"{kind} files in {path}")
    raise GdmixError(
        f"archive {path} holds neither GroupLens files ({', '.join(_GROUPLENS_FILES)}) "
        f"nor RecBole atomic files ({', '.join(_RECBOLE_FILES)})"
    )


def default_cache_dir() -> str:
    return os.environ.get("GDMIX_CACHE") or str(Path.home() / ".cache" / "gdmix")


def fetch_recbole_wheel(cache_dir: str | None = None) -> str:
    """The RecBole wheel (which bundles ml-100k) in the cache, downloaded with pip if absent.

    The wheel is only downloaded (``pip download --no-deps``), never installed. When pip
    cannot reach the package index the error is :class:`~gdmix.errors.DatasetUnavailable`;
    any other failure is a plain :class:`~gdmix.errors.GdmixError`.
    """
    from gdmix.errors import DatasetUnavailable

    folder = Path(cache_dir or default_cache_dir()).expanduser() / "recbole"
    existing = sorted(folder.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if existing:
        return str(existing[0])
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        f"recbole=={RECBOLE_VERSION}", "-d", str(folder),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise GdmixError(f"could not run pip to download recbole=={RECBOLE_VERSION}: {exc}") from None
    existing = sorted(folder.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if result.returncode != 0 or not existing:
        output = f"{result.stdout or ''}\n{result.stderr or ''}"
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
        network = _network_failure(output)
        error = DatasetUnavailable if network else GdmixError
        raise error(
            f"downloading MovieLens 100K (bundled in the recbole=={RECBOLE_VERSION} wheel) into "
            f"{folder} failed (pip exit code {result.returncode}"
            + ("; the package index could not be reached" if network else "") + ")"
            + (": " + " | ".join(detail) if detail else "")
            + f". Without network access, pass source= a GroupLens ml-100k folder, a RecBole "
            f"atomic-file folder or a copy of {RECBOLE_WHEEL}."
        )
    return str(existing[0])


# what pip (urllib3 / requests / the resolver) prints when the index cannot be reached
_NETWORK_MARKERS = (
    "NewConnectionError", "Failed to establish a new connection", "Max retries exceeded",
    "Temporary failure in name resolution", "Name or service not known", "nodename nor servname",
    "Network is unreachable", "No route to host", "Connection refused", "ConnectTimeoutError",
    "ReadTimeoutError", "Read timed out", "ProxyError", "Tunnel connection failed", "ConnectionError",
    "Could not fetch URL",
)


def _network_failure(output: str) -> str | None:
    """The first line of pip's output that says the package index could not be reached."""
    for line in output.splitlines():
        if any(marker in line for marker in _NETWORK_MARKERS):
            return line.strip()[:300]
    return None


# parsing


@dataclass
class _Ratings:
    user: np.ndarray  # int64
    movie: np.ndarray  # int64
    rating: np.ndarray  # float64


@dataclass
class _Users:
    ids: np.ndarray  # int64, file order
    age: list[int]
    gender: list[str]
    occupation: list[str]


@dataclass
class _Movies:
    ids: np.ndarray
    title: list[str]
    year: list[int | None]
    genres: list[list[str]]


def _lines(text: str) -> list[tuple[int, str]]:
    return [(k + 1, line) for k, line in enumerate(text.splitlines()) if line.strip()]


def _fail(where: str, line: int | None, message: str) -> DataError:
    return DataError((f"line {line}: " if line is not None else "") + message, path=where)


def _split_rows(rows: list[tuple[int, str]], sep: str, width: int, where: str) -> list[list[str]]:
    out = []
    for number, line in rows:
        parts = line.rstrip("\r\n").split(sep)
        if len(parts) != width:
            raise _fail(
                where, number,
                f"expected {width} {'tab' if sep == chr(9) else repr(sep)}-separated fields, "
                f"found {len(parts)}",
            )
        out.append(parts)
    return out


def _int_column(values, rows, where: str, what: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except (ValueError, OverflowError):
        for (number, _), value in zip(rows, values):
            try:
                if not -(2**63) <= int(value) < 2**63:
                    raise ValueError
            except ValueError:
                raise _fail(where, number, f"{what} {value!r} is not a 64-bit integer") from None
        raise


def _float_column(values, rows, where: str, what: str) -> np.ndarray:
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        for (number, _), value in zip(rows, values):
            try:
                float(value)
            except ValueError:
                raise _fail(where, number, f"{what} {value!r} is not a number") from None
        raise
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise _fail(where, rows[bad[0]][0], f"{what} {values[bad[0]]!r} is not finite")
    return array


def _recbole_header(text: str, where: str, required: tuple[str, ...]):
    rows = _lines(text)
    if not rows:
        raise _fail(where, None, "file is empty")
    header = [field.split(":", 1)[0].strip() for field in rows[0][1].rstrip("\r\n").split("\t")]
    missing = [name for name in required if name not in header]
    if missing:
        raise _fail(
            where, rows[0][0],
            f"header lacks field(s) {', '.join(missing)} (has {', '.join(header)}); expected a "
            "RecBole atomic file with a 'name:type' header",
        )
    body = _split_rows(rows[1:], "\t", len(header), where)
    return rows[1:], body, {name: header.index(name) for name in required}


def _check_unique(ids: np.ndarray, rows, where: str, what: str) -> None:
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        k = order[dup[0] + 1]
        raise _fail(where, rows[k][0], f"duplicate {what} {ids[k]}")


def _parse_user_fields(rows, ids, ages, genders, occupations, where: str) -> _Users:
    if not rows:
        raise _fail(where, None, "no users")
    _check_unique(ids, rows, where, "user id")
    age = _int_column(ages, rows, where, "age").tolist()
    for (number, _), g, o in zip(rows, genders, occupations):
        if g not in GENDERS:
            raise _fail(where, number, f"gender {g!r} is not one of {', '.join(GENDERS)}")
        if o not in OCCUPATIONS:
            raise _fail(where, number, f"occupation {o!r} is not a MovieLens 100K occupation")
    return _Users(ids, age, list(genders), list(occupations))


def _split_title(raw: str) -> tuple[str, str | None]:
    """GroupLens title -> (title, content of its last parenthesised group), as RecBole did."""
    match = _LAST_GROUP.match(raw)
    if match:
        return match.group(1).strip(), match.group(2).strip()
    return raw.strip(), None


def _title_year(title: str, token: str | None) -> tuple[str, int | None]:
    """The title and year from a title and the token RecBole calls ``release_year``.

    The token is a year (``Toy Story``, ``1995``), missing, or another parenthesised suffix such
    as the video marker of ``Land Before Time III: ... (1995) (V)``: then the title's own
    ``(yyyy)`` suffix is the year and the marker is dropped, or, without one, the suffix is put
    back into the title.

    A title left empty (an empty field, or nothing but a year) becomes ``unknown``, MovieLens's
    own title for its untitled movie 267, so every row has some text for a text model.
    """
    if token is not None and token.lower() in _RECBOLE_UNKNOWN:
        token = None
    year = None
    if token is not None and _YEAR.fullmatch(token):
        year = int(token)
    elif match := _TITLE_YEAR.search(title):
        title, year = title[: match.start()].strip(), int(match.group(1))
    elif token is not None:
        title = f"{title} ({token})"
    return title or UNKNOWN_TITLE, year


def _parse_grouplens(files: _Files) -> tuple[_Ratings, _Users, _Movies]:
    where = files.where("u.data")
    rows = _lines(files.read_text("u.data"))
    if not rows:
        raise _fail(where, None, "no ratings")
    fields = _split_rows(rows, "\t", 4, where)
    cols = list(zip(*fields))
    ratings = _Ratings(
        _int_column(cols[0], rows, where, "user id"),
        _int_column(cols[1], rows, where, "item id"),
        _float_column(cols[2], rows, where, "rating"),
    )

    where = files.where("u.user")
    rows = _lines(files.read_text("u.user"))
    fields = _split_rows(rows, "|", 5, where)
    cols = list(zip(*fields)) or [()] * 5
    users = _parse_user_fields(
        rows, _int_column(cols[0], rows, where, "user id"), cols[1], cols[2], cols[3], where
    )

    where = files.where("u.item")
    rows = _lines(files.read_text("u.item"))
    if not rows:
        raise _fail(where, None, "no movies")
    fields = _split_rows(rows, "|", 5 + len(GENRES), where)
    ids = _int_column([f[0] for f in fields], rows, where, "movie id")
    _check_unique(ids, rows, where, "movie id")
    titles, years, genres = [], [], []
    for (number, _), parts in zip(rows, fields):
        title, year = _title_year(*_split_title(parts[1]))
        date = parts[2].strip()
        if date:
            pieces = date.split("-")
            if (len(pieces) != 3 or not pieces[0].isdigit() or pieces[1].lower() not in _MONTHS
                    or not (pieces[2].isdigit() and len(pieces[2]) == 4)):
                raise _fail(where, number, f"release date {date!r} is not dd-Mon-yyyy")
            if year is None:
                year = int(pieces[2])
        flags = [flag.strip() for flag in parts[5:]]
        bad = [flag for flag in flags if flag not in ("0", "1")]
        if bad:
            raise _fail(where, number, f"genre flag {bad[0]!r} is not 0 or 1")
        titles.append(title)
        years.append(year)
        genres.append([g for g, flag in zip(GENRES, flags) if flag == "1"])
    return ratings, users, _Movies(ids, titles, years, genres)


def _parse_recbole(files: _Files) -> tuple[_Ratings, _Users, _Movies]:
    where = files.where("ml-100k.inter")
    rows, body, at = _recbole_header(
        files.read_text("ml-100k.inter"), where, ("user_id", "item_id", "rating")
    )
    if not rows:
        raise _fail(where, None, "no ratings")
    ratings = _Ratings(
        _int_column([f[at["user_id"]] for f in body], rows, where, "user_id"),
        _int_column([f[at["item_id"]] for f in body], rows, where, "item_id"),
        _float_column([f[at["rating"]] for f in body], rows, where, "rating"),
    )

    where = files.where("ml-100k.user")
    rows, body, at = _recbole_header(
        files.read_text("ml-100k.user"), where, ("user_id", "age", "gender", "occupation")
    )
    users = _parse_user_fields(
        rows,
        _int_column([f[at["user_id"]] for f in body], rows, where, "user_id"),
        [f[at["age"]] for f in body],
        [f[at["gender"]] for f in body],
        [f[at["occupation"]] for f in body],
        where,
    )

    where = files.where("ml-100k.item")
    rows, body, at = _recbole_header(
        files.read_text("ml-100k.item"), where, ("item_id", "movie_title", "release_year", "class")
    )
    if not rows:
        raise _fail(where, None, "no movies")
    ids = _int_column([f[at["item_id"]] for f in body], rows, where, "item_id")
    _check_unique(ids, rows, where, "item_id")
    titles, years, genres = [], [], []
    for (number, _), parts in zip(rows, body):
        title = parts[at["movie_title"]].strip()
        title, year = _title_year(
            UNKNOWN_TITLE if title == "unkonwn" else title, parts[at["release_year"]].strip()
        )
        titles.append(title)
        years.append(year)
        names = parts[at["class"]].split()
        bad = [g for g in names if g not in GENRES]
        if bad:
            raise _fail(where, number, f"genre {bad[0]!r} is not a MovieLens 100K genre")
        genres.append([g for g in GENRES if g in names])
    return ratings, users, _Movies(ids, titles, years, genres)


# features


def _user_features(users: _Users) -> list[list[tuple[str, str, float]]]:
    return [
        [f for f in (("age", "", age / 100.0), ("gender", g, 1.0), ("occupation", o, 1.0)) if f[2] != 0.0]
        for age, g, o in zip(users.age, users.gender, users.occupation)
    ]


def _user_texts(users: _Users) -> list[str]:
    words = {"M": "male", "F": "female"}
    return [
        f"age {age} gender {words[g]} occupation {o}"
        for age, g, o in zip(users.age, users.gender, users.occupation)
    ]


def _movie_features(movies: _Movies) -> list[list[tuple[str, str, float]]]:
    out = []
    for genres, year in zip(movies.genres, movies.year):
        features = [("genre", g, 1.0) for g in genres]
        if year is not None and year != 0:
            features.append(("release_year", "", year / 2000.0))
        out.append(features)
    return out


def _pool(per_entity: list[list[tuple[str, str, float]]]) -> tuple[pa.StructArray, np.ndarray, np.ndarray]:
    flat = [f for features in per_entity for f in features]
    lengths = np.array([len(features) for features in per_entity], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    struct = pa.StructArray.from_arrays(
        [
            pa.array([f[0] for f in flat], pa.string()),
            pa.array([f[1] for f in flat], pa.string()),
            pa.array([f[2] for f in flat], pa.float64()),
        ],
        fields=list(FEATURE_STRUCT),
    )
    return struct, starts, lengths


def _bag(pool: pa.StructArray, starts: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """Row ``i`` = concatenation of ``pool[starts[i, j] : starts[i, j] + lengths[i, j]]`` over j."""
    flat_starts = starts.reshape(-1)
    flat_lengths = lengths.reshape(-1)
    total = int(flat_lengths.sum())
    before = np.cumsum(flat_lengths) - flat_lengths
    index = np.repeat(flat_starts - before, flat_lengths) + np.arange(total, dtype=np.int64)
    items = pool.take(pa.array(index))
    offsets = np.concatenate([[0], np.cumsum(lengths.reshape(len(starts), -1).sum(axis=1))])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), items, type=FEATURE_BAG_TYPE)


def _positions(ids: np.ndarray, wanted: np.ndarray, where: str, what: str) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], wanted)
    pos = np.minimum(pos, len(ids) - 1)
    found = ids[order][pos] == wanted
    if not found.all():
        k = int(np.flatnonzero(~found)[0])
        raise DataError(
            f"rating {k} (0-based, data line order) refers to {what} {wanted[k]}, which is not in "
            f"the {what} file",
            path=where,
        )
    return order[pos]


def movielens_table(ratings: _Ratings, users: _Users, movies: _Movies, ratings_where: str) -> pa.Table:
    """All ratings as one contract table (before the split)."""
    n = len(ratings.user)
    ui = _positions(users.ids, ratings.user, ratings_where, "user")
    mi = _positions(movies.ids, ratings.movie, ratings_where, "movie")
    user_pool, u_start, u_len = _pool(_user_features(users))
    movie_pool, m_start, m_len = _pool(_movie_features(movies))
    pool = pa.concat_arrays([user_pool, movie_pool])
    m_start = m_start + len(user_pool)
    user_ranges = (u_start[ui][:, None], u_len[ui][:, None])
    movie_ranges = (m_start[mi][:, None], m_len[mi][:, None])
    global_bag = _bag(
        pool,
        np.hstack([user_ranges[0], movie_ranges[0]]),
        np.hstack([user_ranges[1], movie_ranges[1]]),
    )
    return pa.table(
        {
            "uid": pa.array(np.arange(n, dtype=np.int64)),
            "label": pa.array((ratings.rating > 3).astype(np.float64)),
            "user_id": pa.array(ratings.user, pa.int64()),
            "movie_id": pa.array(ratings.movie, pa.int64()),
            "title": pa.array(movies.title, pa.string()).take(pa.array(mi)),
            "user_text": pa.array(_user_texts(users), pa.string()).take(pa.array(ui)),
            "global": global_bag,
            "per_user": _bag(pool, *movie_ranges),
            "per_movie": _bag(pool, *user_ranges),
        }
    )


def load_movielens_100k(source: str) -> tuple[pa.Table, _Files]:
    """Read a MovieLens 100K source into one table of all ratings (no split)."""
    files = _open_source(source)
    parse = _parse_grouplens if files.kind == "grouplens" else _parse_recbole
    ratings, users, movies = parse(files)
    first = "u.data" if files.kind == "grouplens" else "ml-100k.inter"
    return movielens_table(ratings, users, movies, files.where(first)), files


def split_train_validation(table: pa.Table, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    is_train = rng.random(table.num_rows) < TRAIN_FRACTION
    return table.filter(pa.array(is_train)), table.filter(pa.array(~is_train))


def split_masks(rows: int, seed: int, test_fraction: float = 0.0,
                test_seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (train, validation, test) masks over ``rows`` ratings in file order; see the
    module docstring. Disjoint, covering every row; validation is 20% of all rows in expectation."""
    if not 0.0 <= test_fraction < TRAIN_FRACTION:
        raise GdmixError(f"test_fraction must be in [0, {TRAIN_FRACTION:g}) (validation keeps "
                         f"{1 - TRAIN_FRACTION:.0%} of the rows), got {test_fraction!r}")
    if test_fraction == 0:
        is_train = np.random.default_rng(seed).random(rows) < TRAIN_FRACTION
        return is_train, ~is_train, np.zeros(rows, dtype=bool)
    test_rng = np.random.default_rng(seed if test_seed is None else test_seed)
    is_test = test_rng.random(rows) < test_fraction
    train_share = (TRAIN_FRACTION - test_fraction) / (1.0 - test_fraction)
    is_train = ~is_test & (np.random.default_rng(seed).random(rows) < train_share)
    return is_train, ~is_test & ~is_train, is_test


def build_movielens_100k(
    out: str, source: str | None = None, seed: int = 42, cache_dir: str | None = None,
    test_fraction: float = 0.0, test_seed: int | None = None,
) -> dict:
    """Build ``out/train/`` and ``out/validation/`` (and ``out/test/`` when ``test_fraction > 0``)
    from MovieLens 100K; return a summary.

    ``source``: a GroupLens ``ml-100k`` folder or zip, a folder of RecBole atomic files, or the
    RecBole wheel; ``None`` downloads the RecBole wheel into ``cache_dir`` (default
    ``$GDMIX_CACHE`` or ``~/.cache/gdmix``), under ``recbole/``, reusing a wheel already there.
    ``test_fraction``, ``test_seed``: the held-out test split (see the module docstring); the
    validation split is unchanged when ``test_fraction`` is 0.
    """
    started = time.perf_counter()
    test_fraction = float(test_fraction)
    split_masks(0, seed, test_fraction, test_seed)  # check the arguments before any download
    if source is None:
        source = fetch_recbole_wheel(cache_dir)
    table, files = load_movielens_100k(str(source))
    is_train, is_validation, is_test = split_masks(table.num_rows, seed, test_fraction, test_seed)
    train, validation = table.filter(pa.array(is_train)), table.filter(pa.array(is_validation))
    train_uri, validation_uri = fs.join(out, "train"), fs.join(out, "validation")
    write_dataset(train, train_uri)
    write_dataset(validation, validation_uri)
    summary_test = {}
    if test_fraction == 0:
        fs.remove(fs.join(out, "test"))  # an earlier build's test rows may be this build's training rows
    else:
        test = table.filter(pa.array(is_test))
        test_uri = fs.join(out, "test")
        write_dataset(test, test_uri)
        summary_test = {"test_rows": test.num_rows, "test": test_uri,
                        "test_seed": seed if test_seed is None else test_seed, "test_fraction": test_fraction}
    labels = table.column("label").to_numpy()
    return {
        "source": str(source),
        "format": files.kind,
        "rows": table.num_rows,
        "train_rows": train.num_rows,
        "validation_rows": validation.num_rows,
        **({"test_rows": summary_test["test_rows"]} if summary_test else {}),
        "users": len(np.unique(table.column("user_id").to_numpy())),
        "movies": len(np.unique(table.column("movie_id").to_numpy())),
        "positive_rate": float(labels.mean()) if len(labels) else 0.0,
        "seed": seed,
        "train": train_uri,
        "validation": validation_uri,
        **{k: v for k, v in summary_test.items() if k != "test_rows"},
        "seconds": round(time.perf_counter() - started, 3),
    }
