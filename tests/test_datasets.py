"""Dataset builders: MovieLens 100K (from tiny hand-written fixtures) and synthetic GLMix data.

No real MovieLens data is used or stored: the fixtures below imitate the GroupLens and RecBole
file formats with a handful of invented rows.
"""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gdmix.example_data import movielens, synthetic
from gdmix.example_data.movielens import BAG_FEATURES, build_movielens_100k, load_movielens_100k
from gdmix.example_data.synthetic import SyntheticData, generate_synthetic, write_synthetic
from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.io.contract import FEATURE_BAG_TYPE, ContractColumns, read_contract_table

# ----------------------------------------------------------------------------- fixtures

# id, age, gender, occupation, zip
USERS = [
    (1, 24, "M", "technician", "85711"),
    (2, 53, "F", "other", "94043"),
    (3, 23, "M", "writer", "32067"),
    (4, 33, "F", "none", "E2A4H"),
    (5, 7, "M", "student", "55105"),
    (6, 61, "F", "healthcare", "98101"),
]
# id, GroupLens title, release date, genres, RecBole movie_title, RecBole release_year
MOVIES = [
    (1, "Toy Story (1995)", "01-Jan-1995", ["Animation", "Children's", "Comedy"], "Toy Story", "1995"),
    # title year and release-date year differ (as in the real data): the title year wins
    (2, "Kolya (1996)", "24-Jan-1997", ["Comedy"], "Kolya", "1996"),
    # no release date, no year, genre 'unknown' (RecBole spells it 'unkonwn')
    (3, "unknown", "", ["unknown"], "unkonwn", "unkonwn"),
    # non-ASCII (latin-1 in GroupLens, UTF-8 in RecBole), several genres
    (4, "Misérables, Les (1995)", "01-Jan-1995", ["Drama", "Musical"], "Misérables, Les", "1995"),
    # a video marker after the year: RecBole keeps '(1995)' in the title and calls 'V' the year
    (5, "Land Before Time III: The Time of the Great Giving (1995) (V)", "01-Jan-1995",
     ["Animation", "Children's"], "Land Before Time III: The Time of the Great Giving (1995)", "V"),
    (6, "Double vie de Véronique, La (Double Life of Veronique, The) (1991)", "01-Jan-1991",
     ["Drama"], "Double vie de Véronique, La (Double Life of Veronique, The)", "1991"),
]
EXPECTED_TITLES = {
    1: "Toy Story", 2: "Kolya", 3: "unknown", 4: "Misérables, Les",
    5: "Land Before Time III: The Time of the Great Giving",
    6: "Double vie de Véronique, La (Double Life of Veronique, The)",
}
EXPECTED_YEARS = {1: 1995, 2: 1996, 3: None, 4: 1995, 5: 1995, 6: 1991}


def _ratings() -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(7)
    out = [(1 + k % 6, 1 + k % 6, 1 + k % 5, 880000000 + k) for k in range(6)]  # every user/movie
    for k in range(26):
        out.append((int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(1, 6)),
                    881000000 + k))
    return out


RATINGS = _ratings()


def write_grouplens(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS))
    (folder / "u.user").write_text("".join("|".join(map(str, row)) + "\n" for row in USERS))
    lines = []
    for mid, title, date, genres, *_ in MOVIES:
        flags = ["1" if g in genres else "0" for g in movielens.GENRES]
        url = f"http://us.imdb.com/M/title-exact?{mid}"
        lines.append("|".join([str(mid), title, date, "", url] + flags) + "\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return folder


def _recbole_files() -> dict[str, bytes]:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS
    )
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" + "".join(
        "\t".join(map(str, row)) + "\n" for row in USERS
    )
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{mid}\t{rb_title}\t{rb_year}\t{' '.join(genres)}\n"
        for mid, _, _, genres, rb_title, rb_year in MOVIES
    )
    return {
        "ml-100k.inter": inter.encode("utf-8"),
        "ml-100k.user": user.encode("utf-8"),
        "ml-100k.item": item.encode("utf-8"),
    }


def write_recbole(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in _recbole_files().items():
        (folder / name).write_bytes(data)
    return folder


def write_wheel(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("recbole/__init__.py", "")
        for name, data in _recbole_files().items():
            archive.writestr(f"recbole/dataset_example/ml-100k/{name}", data)
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.kg", "head_id:token\n")
    return path


def write_grouplens_zip(path: Path, tmp: Path) -> Path:
    folder = write_grouplens(tmp / "gl-for-zip")
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("u.data", "u.user", "u.item"):
            archive.write(folder / name, f"ml-100k/{name}")
    return path


def _read(uri: str) -> pa.Table:
    return fs.read_parquet_dir(uri)


def _build(tmp_path: Path, source, name: str, seed: int = 42) -> tuple[dict, pa.Table, pa.Table]:
    out = tmp_path / name
    summary = build_movielens_100k(str(out), source=str(source), seed=seed)
    return summary, _read(str(out / "train")), _read(str(out / "validation"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ml")
    return {
        "grouplens": write_grouplens(tmp / "ml-100k"),
        "recbole": write_recbole(tmp / "recbole-atomic"),
        "wheel": write_wheel(tmp / "wheel" / movielens.RECBOLE_WHEEL),
        "grouplens_zip": write_grouplens_zip(tmp / "ml-100k.zip", tmp),
    }


@pytest.fixture(scope="module")
def full_table(sources) -> pa.Table:
    table, _ = load_movielens_100k(str(sources["grouplens"]))
    return table


# ----------------------------------------------------------------------------- MovieLens


def test_all_source_formats_give_identical_datasets(sources, tmp_path):
    built = {name: _build(tmp_path, path, name) for name, path in sources.items()}
    _, train, validation = built["grouplens"]
    assert train.num_rows + validation.num_rows == len(RATINGS)
    assert train.num_rows > 0 and validation.num_rows > 0
    for name, (summary, other_train, other_validation) in built.items():
        assert other_train.equals(train), name
        assert other_validation.equals(validation), name
        assert summary["rows"] == len(RATINGS)
        assert summary["train_rows"] == train.num_rows
        assert summary["users"] == 6 and summary["movies"] == 6
    assert built["grouplens"][0]["format"] == "grouplens"
    assert built["wheel"][0]["format"] == "recbole"
    positives = np.mean([r > 3 for _, _, r, _ in RATINGS])
    assert built["wheel"][0]["positive_rate"] == pytest.approx(positives)


def test_schema_and_contract(sources, tmp_path):
    _build(tmp_path, sources["wheel"], "out")
    train = _read(str(tmp_path / "out" / "train"))
    assert train.column_names == [
        "uid", "label", "user_id", "movie_id", "title", "user_text", "global", "per_user",
        "per_movie",
    ]
    assert train.schema.field("title").type == pa.string()
    assert train.schema.field("user_text").type == pa.string()
    for bag in ("global", "per_user", "per_movie"):
        assert train.schema.field(bag).type == FEATURE_BAG_TYPE
    assert train.schema.field("uid").type == pa.int64()
    assert train.schema.field("label").type == pa.float64()
    assert train.schema.field("user_id").type == pa.int64()
    assert train.schema.field("movie_id").type == pa.int64()
    checked = read_contract_table(
        str(tmp_path / "out" / "train"),
        ContractColumns(entities=("user_id", "movie_id"), bags=("global", "per_user", "per_movie")),
    )
    assert checked.num_rows == train.num_rows


def test_every_declared_feature_comes_from_the_rows_and_the_split_partitions_them(tmp_path):
    """A fixture with every occupation, both genders and every genre: the (name, term) keys the
    built bags hold are exactly the declared vocabularies, each derived from its row's user and
    movie; train and validation are disjoint, cover every rating once, and match the summary."""
    occupations, genres = movielens.OCCUPATIONS, movielens.GENRES
    users = [(k + 1, 18 + k, "MF"[k % 2], occupation) for k, occupation in enumerate(occupations)]
    movies = [(k + 1, f"Film {k + 1} ({1950 + k})", genre) for k, genre in enumerate(genres)]
    ratings = [(1 + k % len(users), 1 + k % len(movies), 1 + k % 5) for k in range(3 * len(users) * len(movies) // 7)]
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{880000000 + k}\n" for k, (u, m, r) in enumerate(ratings)))
    (folder / "u.user").write_text("".join(f"{u}|{age}|{g}|{o}|00000\n" for u, age, g, o in users))
    (folder / "u.item").write_bytes("".join(
        "|".join([str(m), title, "01-Jan-1990", "", "http://x"] + ["1" if g == genre else "0" for g in genres]) + "\n"
        for m, title, genre in movies).encode("latin-1"))
    summary, train, validation = _build(tmp_path, folder, "out", seed=3)

    train_uids, validation_uids = train.column("uid").to_numpy(), validation.column("uid").to_numpy()
    assert not set(train_uids) & set(validation_uids)
    assert sorted(np.concatenate([train_uids, validation_uids])) == list(range(len(ratings)))
    assert (summary["rows"], summary["train_rows"], summary["validation_rows"]) == \
        (len(ratings), train.num_rows, validation.num_rows)
    assert 0.6 < train.num_rows / len(ratings) < 0.95  # about 80/20

    by_user = {u: (age, g, o) for u, age, g, o in users}
    by_movie = {m: (title, genre) for m, title, genre in movies}
    seen = {bag: set() for bag in BAG_FEATURES}
    for row in train.to_pylist() + validation.to_pylist():
        u, m, r = ratings[row["uid"]]
        assert (row["user_id"], row["movie_id"], row["label"]) == (u, m, float(r > 3))
        age, gender, occupation = by_user[u]
        title, genre = by_movie[m]
        user_part = [("age", "", age / 100), ("gender", gender, 1.0), ("occupation", occupation, 1.0)]
        movie_part = [("genre", genre, 1.0), ("release_year", "", int(title[-5:-1]) / 2000)]
        assert _features(row["per_movie"]) == user_part and _features(row["per_user"]) == movie_part
        assert _features(row["global"]) == user_part + movie_part
        for bag in seen:
            seen[bag] |= {(f["name"], f["term"]) for f in row[bag]}
    for bag, declared in BAG_FEATURES.items():
        assert seen[bag] == set(declared), bag  # nothing declared that no row has, nothing undeclared
        assert len(declared) == len(set(declared)), bag


def _features(bag_row) -> list[tuple[str, str, float]]:
    return [(f["name"], f["term"], f["value"]) for f in bag_row]


def test_rows_labels_and_features(full_table):
    rows = full_table.to_pylist()
    assert [r["uid"] for r in rows] == list(range(len(RATINGS)))
    users = {u[0]: u for u in USERS}
    movies = {m[0]: m for m in MOVIES}
    for row, (u, m, rating, _) in zip(rows, RATINGS):
        assert (row["user_id"], row["movie_id"]) == (u, m)
        assert row["label"] == (1.0 if rating > 3 else 0.0)
        assert row["title"] == EXPECTED_TITLES[m]
        _, age, gender, occupation, _ = users[u]
        sex = {"M": "male", "F": "female"}[gender]
        assert row["user_text"] == f"age {age} gender {sex} occupation {occupation}"
        user_features = [("age", "", age / 100), ("gender", gender, 1.0),
                         ("occupation", occupation, 1.0)]
        genres = movies[m][3]
        movie_features = [("genre", g, 1.0) for g in movielens.GENRES if g in genres]
        if EXPECTED_YEARS[m] is not None:
            movie_features.append(("release_year", "", EXPECTED_YEARS[m] / 2000))
        assert _features(row["per_movie"]) == user_features
        assert _features(row["per_user"]) == movie_features
        assert _features(row["global"]) == user_features + movie_features
        for bag in ("global", "per_user", "per_movie"):
            keys = {(f["name"], f["term"]) for f in row[bag]}
            assert keys <= set(BAG_FEATURES[bag])
            assert all(f["value"] != 0 for f in row[bag])
    # movie 3 has no date: no release_year; a multi-genre movie has all its genres
    unknown = next(r for r in rows if r["movie_id"] == 3)
    assert [f["name"] for f in unknown["per_user"]] == ["genre"]
    toy = next(r for r in rows if r["movie_id"] == 1)
    assert len(toy["per_user"]) == 4 and len(toy["global"]) == 7


def test_title_column(sources, tmp_path):
    for name, source in sources.items():
        _, train, validation = _build(tmp_path, source, name)
        for table in (train, validation):
            titles = table.column("title").to_pylist()
            movies = table.column("movie_id").to_pylist()
            assert len(titles) == table.num_rows > 0
            for movie, title in zip(movies, titles):
                assert title and title == title.strip(), (name, movie)
                assert not re.search(r"\(\d{4}\)$", title), (name, title)
                assert title == EXPECTED_TITLES[movie], (name, movie)
            # user_text names the row's user and is never empty
            users = {u[0]: u for u in USERS}
            for user, text in zip(table.column("user_id").to_pylist(),
                                  table.column("user_text").to_pylist()):
                assert text.startswith(f"age {users[user][1]} gender ")
                assert text.endswith(f" occupation {users[user][3]}")
    # Raw text, not normalised: case, accents, commas and inner parentheses are kept.
    assert EXPECTED_TITLES[4] == "Misérables, Les"
    assert EXPECTED_TITLES[6] == "Double vie de Véronique, La (Double Life of Veronique, The)"


# id, GroupLens title (latin-1), RecBole movie_title, RecBole release_year, expected title, year
ODD_TITLES = [
    (1, "", "", "1995", "unknown", 1995),  # empty title; GroupLens year from the release date
    (2, "(1996)", "", "1996", "unknown", 1996),  # nothing but a year
    (3, "Café au Lait, Le (1993)", "Café au Lait, Le", "1993", "Café au Lait, Le", 1993),
    (4, "1941 (1979)", "1941", "1979", "1941", 1979),  # a title that is a number
    (5, "Seven (Se7en) (1995)", "Seven (Se7en)", "1995", "Seven (Se7en)", 1995),
    (6, "Gone Fishin' (1997)", "Gone Fishin'", "1997", "Gone Fishin'", 1997),
]


def test_odd_titles(tmp_path):
    grouplens = write_grouplens(tmp_path / "gl")
    lines = []
    for mid, title, *_ in ODD_TITLES:
        flags = ["1" if g == "Drama" else "0" for g in movielens.GENRES]
        lines.append("|".join([str(mid), title, "01-Jan-1995", "", "http://x"] + flags) + "\n")
    (grouplens / "u.item").write_bytes("".join(lines).encode("latin-1"))
    recbole = write_recbole(tmp_path / "rb")
    (recbole / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{mid}\t{rb_title}\t{rb_year}\tDrama\n"
                  for mid, _, rb_title, rb_year, _, _ in ODD_TITLES),
        encoding="utf-8",
    )
    tables = [load_movielens_100k(str(source))[0] for source in (grouplens, recbole)]
    assert tables[0].equals(tables[1])
    expected = {mid: (title, year) for mid, *_, title, year in ODD_TITLES}
    for row in tables[0].to_pylist():
        title, year = expected[row["movie_id"]]
        assert row["title"] == title
        assert ("release_year", "", year / 2000) in _features(row["per_user"])


def test_split_is_seeded(sources, tmp_path, full_table):
    _, train_a, val_a = _build(tmp_path, sources["recbole"], "a", seed=42)
    _, train_b, _ = _build(tmp_path, sources["recbole"], "b", seed=42)
    _, train_c, _ = _build(tmp_path, sources["recbole"], "c", seed=1)
    assert train_a.equals(train_b)
    uids_a = train_a.column("uid").to_numpy()
    assert not np.array_equal(uids_a, train_c.column("uid").to_numpy())
    expected = np.random.default_rng(42).random(len(RATINGS)) < 0.8
    assert np.array_equal(uids_a, np.flatnonzero(expected))
    all_uids = np.concatenate([uids_a, val_a.column("uid").to_numpy()])
    assert len(np.unique(all_uids)) == len(all_uids) == len(RATINGS)
    # the split rows are the rows of the unsplit table
    assert train_a.equals(full_table.take(pa.array(np.flatnonzero(expected))))


def test_rebuild_replaces_output(sources, tmp_path):
    _build(tmp_path, sources["grouplens"], "same", seed=1)
    _, train, validation = _build(tmp_path, sources["grouplens"], "same", seed=2)
    expected = np.random.default_rng(2).random(len(RATINGS)) < 0.8
    assert np.array_equal(train.column("uid").to_numpy(), np.flatnonzero(expected))


def _expect_error(source, match: str, tmp_path: Path) -> GdmixError:
    with pytest.raises(GdmixError, match=match) as info:
        build_movielens_100k(str(tmp_path / "never"), source=str(source))
    assert not (tmp_path / "never").exists()
    return info.value


def test_missing_files_are_named(tmp_path):
    folder = write_grouplens(tmp_path / "gl")
    (folder / "u.user").unlink()
    _expect_error(folder, r"u\.user", tmp_path)
    folder = write_recbole(tmp_path / "rb")
    (folder / "ml-100k.item").unlink()
    _expect_error(folder, r"ml-100k\.item", tmp_path)
    wheel = tmp_path / "broken.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "user_id:token\n")
    _expect_error(wheel, r"ml-100k\.user", tmp_path)
    _expect_error(tmp_path / "nowhere", "does not exist", tmp_path)
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path / "empty", "neither", tmp_path)
    (tmp_path / "notzip.whl").write_text("hello")
    _expect_error(tmp_path / "notzip.whl", "not a zip", tmp_path)


@pytest.mark.parametrize(
    "file, content, match",
    [
        ("u.data", "1\t2\t3\n", r"u\.data.*line 1.*4 tab-separated fields"),
        ("u.data", "1\t2\tfive\t0\n", r"u\.data.*line 1.*rating 'five'"),
        ("u.data", "1\t99\t3\t0\n", r"u\.data.*movie 99"),
        ("u.data", "", r"u\.data.*no ratings"),
        ("u.user", "1|24|M|technician\n", r"u\.user.*line 1"),
        ("u.user", "1|24|X|technician|1\n", r"u\.user.*gender 'X'"),
        ("u.user", "1|24|M|astronaut|1\n", r"u\.user.*occupation 'astronaut'"),
        ("u.item", "1|Toy Story (1995)|1995|||0\n", r"u\.item.*line 1.*24"),
        ("u.item", "1|Toy Story (1995)|1/1/95||" + "|0" * 19 + "\n", r"u\.item.*release date"),
    ],
)
def test_malformed_grouplens_files_are_named(tmp_path, file, content, match):
    folder = write_grouplens(tmp_path / "gl")
    (folder / file).write_text(content)
    error = _expect_error(folder, match, tmp_path)
    assert str(folder / file) in str(error)


@pytest.mark.parametrize(
    "file, content, match",
    [
        ("ml-100k.inter", "user_id:token\titem_id:token\n1\t1\n", r"ml-100k\.inter.*rating"),
        ("ml-100k.inter", "", r"ml-100k\.inter.*empty"),
        ("ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                         "1\tToy Story\t1995\tCartoon\n", r"ml-100k\.item.*line 2.*'Cartoon'"),
    ],
)
def test_malformed_recbole_files_are_named(tmp_path, file, content, match):
    folder = write_recbole(tmp_path / "rb")
    (folder / file).write_text(content)
    _expect_error(folder, match, tmp_path)


def test_download_uses_cache_and_pip(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        assert command[:4] == [movielens.sys.executable, "-m", "pip", "download"]
        assert "--no-deps" in command and "recbole==1.2.1" in command
        assert "install" not in command
        target = Path(command[command.index("-d") + 1])
        write_wheel(target / movielens.RECBOLE_WHEEL)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(movielens.subprocess, "run", fake_run)
    monkeypatch.setenv("GDMIX_CACHE", str(tmp_path / "envcache"))
    summary = build_movielens_100k(str(tmp_path / "out"))
    assert len(calls) == 1
    assert summary["source"] == str(tmp_path / "envcache" / "recbole" / movielens.RECBOLE_WHEEL)
    assert summary["rows"] == len(RATINGS)
    build_movielens_100k(str(tmp_path / "out2"))  # reuses the cached wheel
    assert len(calls) == 1
    summary = build_movielens_100k(str(tmp_path / "out3"), cache_dir=str(tmp_path / "explicit"))
    assert len(calls) == 2
    assert summary["source"].startswith(str(tmp_path / "explicit" / "recbole"))


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(movielens.subprocess, "run", failing_run)
    with pytest.raises(GdmixError, match=r"recbole==1\.2\.1.*No matching distribution.*source="):
        build_movielens_100k(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- synthetic


def _small(**kwargs) -> SyntheticData:
    args = dict(rows=3000, entities={"user_id": 50, "item_id": 20}, seed=3)
    args.update(kwargs)
    return generate_synthetic(args.pop("rows"), args.pop("entities"), **args)


def test_synthetic_shapes_and_types():
    data = _small(global_features=12, global_nnz=4, re_features=6, re_nnz=2)
    train, validation = data.train, data.validation
    assert train.num_rows + validation.num_rows == 3000
    assert 0.15 < validation.num_rows / 3000 < 0.25
    assert train.column_names == [
        "uid", "label", "user_id", "item_id", "global", "per_user_id", "per_item_id", "true_logit"
    ]
    assert train.schema.equals(validation.schema)
    for bag in ("global", "per_user_id", "per_item_id"):
        assert train.schema.field(bag).type == FEATURE_BAG_TYPE
    for name in ("uid", "user_id", "item_id"):
        assert train.schema.field(name).type == pa.int64()
    assert train.schema.field("label").type == pa.float64()
    uids = np.concatenate([train["uid"].to_numpy(), validation["uid"].to_numpy()])
    assert np.array_equal(np.sort(uids), np.arange(3000))
    assert set(np.unique(train["label"].to_numpy())) <= {0.0, 1.0}
    assert train["user_id"].to_numpy().max() < 50 and train["item_id"].to_numpy().max() < 20
    for bag, nnz, width in (("global", 4, 12), ("per_user_id", 2, 6), ("per_item_id", 2, 6)):
        rows = train[bag].to_pylist()
        assert all(len(r) == nnz for r in rows)
        assert all(len({f["term"] for f in r}) == nnz for r in rows)  # distinct in a row
        terms = {int(f["term"]) for r in rows for f in r}
        assert terms <= set(range(width)) and len(terms) == width
        assert {f["name"] for r in rows for f in r} == {"g" if bag == "global" else "r"}

    fixed = data.fixed_truth
    assert fixed.column_names == ["name", "term", "value"] and fixed.num_rows == 13
    assert fixed.slice(0, 1).to_pylist() == [{"name": "(INTERCEPT)", "term": "", "value": -0.5}]
    assert set(data.random_truth) == {"user_id", "item_id"}
    users = data.random_truth["user_id"]
    assert users.column_names == ["entity", "name", "term", "value"]
    assert users.schema.field("entity").type == pa.string()
    assert users.num_rows == 50 * 7
    assert pc.sum(pc.equal(users["name"], "(INTERCEPT)")).as_py() == 50
    assert data.random_truth["item_id"].num_rows == 20 * 7


def test_synthetic_is_deterministic():
    a, b, c = _small(), _small(), _small(seed=4)
    assert a.train.equals(b.train) and a.validation.equals(b.validation)
    assert a.fixed_truth.equals(b.fixed_truth)
    assert all(a.random_truth[k].equals(b.random_truth[k]) for k in a.random_truth)
    assert not a.train.equals(c.train)
    assert not a.fixed_truth.equals(c.fixed_truth)


def test_synthetic_blocks_are_seamless(monkeypatch):
    monkeypatch.setattr(synthetic, "BLOCK_ROWS", 700)
    data = _small(rows=3000)
    uids = np.concatenate([data.train["uid"].to_numpy(), data.validation["uid"].to_numpy()])
    assert np.array_equal(np.sort(uids), np.arange(3000))
    assert np.all(np.diff(data.train["uid"].to_numpy()) > 0)


def _logits_from_truth(data: SyntheticData, table: pa.Table, entities: list[str]) -> np.ndarray:
    def coef_map(truth: pa.Table, with_entity: bool) -> dict:
        rows = truth.to_pylist()
        key = (lambda r: (r["entity"], r["name"], r["term"])) if with_entity else (
            lambda r: (r["name"], r["term"]))
        return {key(r): r["value"] for r in rows}

    fixed = coef_map(data.fixed_truth, False)
    randoms = {e: coef_map(data.random_truth[e], True) for e in entities}
    out = []
    for row in table.to_pylist():
        logit = fixed[("(INTERCEPT)", "")]
        logit += sum(f["value"] * fixed[(f["name"], f["term"])] for f in row["global"])
        for e in entities:
            ent = str(row[e])
            logit += randoms[e][(ent, "(INTERCEPT)", "")]
            logit += sum(f["value"] * randoms[e][(ent, f["name"], f["term"])] for f in row[f"per_{e}"])
        out.append(logit)
    return np.array(out)


def test_synthetic_true_logit_matches_truth_tables():
    data = _small(rows=1500)
    sample = data.train.slice(0, 300)
    expected = _logits_from_truth(data, sample, ["user_id", "item_id"])
    assert np.allclose(sample["true_logit"].to_numpy(), expected)


def test_synthetic_labels_follow_the_true_model():
    from sklearn.linear_model import LogisticRegression

    data = generate_synthetic(
        200_000, {}, global_features=10, global_nnz=6, fixed_scale=0.7, validation_fraction=0.0,
        seed=11,
    )
    table = data.train
    assert table.num_rows == 200_000 and data.validation.num_rows == 0
    # calibration: the positive rate per true-logit bin follows the sigmoid
    logit = table["true_logit"].to_numpy()
    label = table["label"].to_numpy()
    edges = np.quantile(logit, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, logit, side="right") - 1, 0, 9)
    for b in range(10):
        mask = bins == b
        assert abs(label[mask].mean() - (1 / (1 + np.exp(-logit[mask]))).mean()) < 0.02
    # refit: coefficients recovered
    items = pc.list_flatten(table["global"].combine_chunks())
    rows = np.repeat(np.arange(table.num_rows), 6)
    cols = pc.cast(items.field("term"), pa.int64()).to_numpy()
    x = np.zeros((table.num_rows, 10))
    x[rows, cols] = items.field("value").to_numpy()
    model = LogisticRegression(C=1e6, max_iter=1000).fit(x, label)
    truth = data.fixed_truth.to_pylist()
    beta = np.array([r["value"] for r in truth[1:]])
    assert np.corrcoef(model.coef_[0], beta)[0, 1] > 0.95
    assert np.abs(model.coef_[0] - beta).max() < 0.05
    assert model.intercept_[0] == pytest.approx(truth[0]["value"], abs=0.05)


def test_synthetic_skew():
    uniform = generate_synthetic(50_000, {"user_id": 10}, seed=1, validation_fraction=0.0)
    counts = np.bincount(uniform.train["user_id"].to_numpy(), minlength=10)
    assert counts.min() > 4500 and counts.max() < 5500
    skewed = generate_synthetic(50_000, {"user_id": 100}, skew=1.0, seed=1, validation_fraction=0.0)
    counts = np.bincount(skewed.train["user_id"].to_numpy(), minlength=100)
    share = counts / counts.sum()
    expected = 1.0 / np.arange(1, 101)
    expected /= expected.sum()
    assert np.allclose(share[:5], expected[:5], rtol=0.1)
    assert counts[0] > 20 * counts[-1]


def test_synthetic_wide_sparse_features_are_distinct():
    data = generate_synthetic(2000, {"user_id": 5}, global_features=5000, global_nnz=8,
                              re_features=300, re_nnz=3, seed=2)
    for bag, nnz in (("global", 8), ("per_user_id", 3)):
        rows = data.train[bag].to_pylist()
        assert all(len({f["term"] for f in r}) == nnz == len(r) for r in rows)


def test_write_synthetic(tmp_path):
    data = _small()
    paths = write_synthetic(str(tmp_path / "syn"), data)
    assert set(paths) == {"train", "validation", "truth/fixed", "truth/user_id", "truth/item_id"}
    checked = read_contract_table(
        paths["train"],
        ContractColumns(entities=("user_id", "item_id"), bags=("global", "per_user_id", "per_item_id")),
    )
    assert checked.num_rows == data.train.num_rows
    assert _read(paths["validation"]).equals(data.validation)
    assert _read(paths["truth/fixed"]).equals(data.fixed_truth)
    assert _read(paths["truth/user_id"]).equals(data.random_truth["user_id"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rows=0), "rows"),
        (dict(global_nnz=30), "global_nnz"),
        (dict(re_nnz=9), "re_nnz"),
        (dict(skew=-1.0), "skew"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(entities={"label": 3}), "clashes"),
        (dict(entities={"user_id": 0}), "positive"),
    ],
)
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(GdmixError, match=match):
        _small(**kwargs)
