"""Corpus scanners -> manifest: small fixture trees per corpus, plus the real
RAVDESS copy in ../shared/data. Scanners only read names, so the fixture
media files are empty."""

from __future__ import annotations

import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from avser import cli
from avser.data.corpora import EXPECTED_FILES, SCANNERS, require_clips, scan_corpus
from avser.data.cremad import scan_cremad
from avser.data.enterface import scan_enterface
from avser.data.iemocap import scan_iemocap, speaker_of
from avser.data.manifest import (
    BAD_NAME,
    DUPLICATE,
    EXCLUDED,
    INCONSISTENT,
    MISSING_FILE,
    OUT_OF_SCOPE,
    UNKNOWN_FILE,
    UNKNOWN_LABEL,
    ScanResult,
    read_clips,
    read_manifest,
    summarize_problems,
    write_manifest,
)
from avser.data.ravdess import scan_ravdess
from avser.errors import AvserError


def touch(root: Path, *names: str, text: str = "") -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def by_id(result: ScanResult) -> dict:
    return {clip.clip_id: clip for clip in result.clips}


def problems_of(result: ScanResult, kind: str) -> list[str]:
    """Names of the files with problems of ``kind``."""
    return sorted(Path(p.path).name for p in result.problems if p.kind == kind)


# ---------------------------------------------------------------- RAVDESS


@pytest.fixture
def ravdess_root(tmp_path: Path) -> Path:
    root = tmp_path / "ravdess"
    touch(
        root,
        "Actor_01/03-01-01-01-01-01-01.wav",  # neutral, speech, audio-only
        "Actor_01/03-01-05-02-01-01-01.wav",  # angry strong
        "Actor_02/03-01-08-01-02-02-02.flac",  # surprised, resampled copy
        "Actor_02/01-01-03-01-01-01-02.mp4",  # happy, audio-video
        "Actor_02/02-01-04-01-01-01-02.mp4",  # sad, video-only
        "Actor_01/03-02-03-01-01-01-01.wav",  # song
        "Actor_01/03-01-09-01-01-01-01.wav",  # emotion 09
        "Actor_01/03-01-01-02-01-01-01.wav",  # neutral cannot be strong
        "Actor_01/03-01-01-01-01.wav",  # five codes
        "Actor_01/03-01-02-01-01-01-03.wav",  # actor 03 in Actor_01
        "Actor_01/01-01-02-01-01-01-01.wav",  # audio-video code on a wav
        "Actor_01/03-01-01-01-01-01-01.flac",  # second copy of the first clip
        "Actor_01/notes.txt",
    )
    return root


def test_ravdess_clips_labels_speakers(ravdess_root):
    result = scan_ravdess(ravdess_root)
    clips = by_id(result)
    assert sorted(clips) == [
        "01-01-03-01-01-01-02",
        "02-01-04-01-01-01-02",
        "03-01-01-01-01-01-01",
        "03-01-05-02-01-01-01",
        "03-01-08-01-02-02-02",
    ]
    assert result.labels == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    for clip in clips.values():
        assert result.labels[clip.label] == clip.label_name
        assert clip.corpus == "ravdess"
    angry = clips["03-01-05-02-01-01-01"]
    assert (angry.label_name, angry.label, angry.speaker) == ("angry", 4, "Actor_01")
    assert angry.extra == {
        "modality": "audio_only",
        "vocal_channel": "speech",
        "intensity": "strong",
        "statement": 1,
        "repetition": 1,
        "actor": 1,
        "gender": "male",
    }
    assert clips["03-01-08-01-02-02-02"].extra["gender"] == "female"
    assert clips["03-01-08-01-02-02-02"].speaker == "Actor_02"


def test_ravdess_paths_follow_modality(ravdess_root):
    clips = by_id(scan_ravdess(ravdess_root))
    audio_only, audio_video, video_only = (
        clips["03-01-01-01-01-01-01"],
        clips["01-01-03-01-01-01-02"],
        clips["02-01-04-01-01-01-02"],
    )
    # the .flac sorts before its .wav twin, so it is the copy kept
    assert audio_only.audio_path.endswith("03-01-01-01-01-01-01.flac") and audio_only.video_path is None
    assert audio_video.audio_path == audio_video.video_path and audio_video.video_path.endswith(".mp4")
    assert video_only.audio_path is None and video_only.video_path.endswith(".mp4")
    assert Path(audio_only.audio_path).is_absolute() and Path(audio_only.audio_path).is_file()


def test_ravdess_reports_every_file_it_does_not_keep(ravdess_root):
    result = scan_ravdess(ravdess_root)
    assert problems_of(result, EXCLUDED) == ["03-02-03-01-01-01-01.wav"]
    assert problems_of(result, UNKNOWN_LABEL) == ["03-01-09-01-01-01-01.wav"]
    assert problems_of(result, BAD_NAME) == ["03-01-01-01-01.wav", "03-01-01-02-01-01-01.wav"]
    assert problems_of(result, INCONSISTENT) == ["01-01-02-01-01-01-01.wav", "03-01-02-01-01-01-03.wav"]
    assert problems_of(result, DUPLICATE) == ["03-01-01-01-01-01-01.wav"]
    assert problems_of(result, UNKNOWN_FILE) == ["notes.txt"]
    n_files = sum(1 for p in ravdess_root.rglob("*") if p.is_file())
    assert len(result.clips) + len(result.problems) == n_files
    assert "emotion code 09" in next(p.reason for p in result.problems if p.kind == UNKNOWN_LABEL)


def test_ravdess_options(ravdess_root):
    with_song = by_id(scan_ravdess(ravdess_root, include_song=True))
    assert with_song["03-02-03-01-01-01-01"].extra["vocal_channel"] == "song"
    audio = scan_ravdess(ravdess_root, modalities=["audio_only"])
    assert {c.extra["modality"] for c in audio.clips} == {"audio_only"}
    assert problems_of(audio, EXCLUDED) == sorted(
        ["03-02-03-01-01-01-01.wav", "01-01-03-01-01-01-02.mp4", "02-01-04-01-01-01-02.mp4"]
    )
    with pytest.raises(AvserError, match="audio_only"):
        scan_ravdess(ravdess_root, modalities=["audio"])


def test_missing_root_names_it(tmp_path):
    missing = tmp_path / "no-such-corpus"
    for scan in (scan_ravdess, scan_enterface, scan_iemocap, scan_cremad):
        with pytest.raises(AvserError, match="no-such-corpus"):
            scan(missing)


def test_real_ravdess_speech(shared_data):
    result = scan_ravdess(shared_data / "ravdess-speech-16k")
    frame = result.to_frame()
    assert len(frame) == 960
    assert frame["speaker"].nunique() == 16
    assert sorted(frame["label"].unique()) == list(range(8))
    assert result.problems == []
    # 2 statements x 2 repetitions x (1 neutral + 7 emotions x 2 intensities) per actor
    assert set(Counter(frame["speaker"]).values()) == {60}
    assert Counter(frame["label_name"])["neutral"] == 64


def test_real_ravdess_originals(shared_data):
    result = scan_ravdess(shared_data / "ravdess-speech-48k-originals")
    assert len(result.clips) == 3 and result.problems == []
    assert by_id(result)["03-01-02-01-01-02-01"].label_name == "calm"


def test_manifest_round_trip(ravdess_root, tmp_path):
    result = scan_ravdess(ravdess_root)
    path = write_manifest(result.clips, tmp_path / "out" / "manifest.parquet")
    assert read_clips(path) == result.clips


# ---------------------------------------------------------------- eNTERFACE


@pytest.fixture
def enterface_root(tmp_path: Path) -> Path:
    root = tmp_path / "enterface"
    base = "enterface database"
    touch(
        root,
        f"{base}/subject 1/anger/sentence 1/s1_an_1.avi",
        f"{base}/subject 1/anger/sentence 2/s1_an_2.avi",
        f"{base}/subject 1/happiness/sentence 1/s1_ha_1.avi",
        f"{base}/subject 1/Thumbs.db",
        # subject 6: no sentence folders for anger, one for disgust
        f"{base}/subject 6/anger/s6_an_1.avi",
        f"{base}/subject 6/anger/s6_an_2.avi",
        f"{base}/subject 6/disgust/sentence 1/s6_di_1.avi",
        f"{base}/subject 6/fear/s6_fe.avi",  # no sentence number anywhere
        # subject 11's files are named s12_*, folders spelt loosely
        f"{base}/Subject11 /Happyness/Sentence 3/s12_ha_3.avi",
        f"{base}/subject 16/surprise/sentence 3/s16_su_3avi.avi",
        f"{base}/subject 2/joy/sentence 1/s2_jo_1.avi",
        f"{base}/subject 2/anger/notes.txt",
        f"{base}/subject 2/anger/sentence 1/extra/s2_an_1.avi",
        f"{base}/subject 2/sadness/sentence 1/s2_sa_1.avi",
        f"{base}/subject 2/sadness/sentence 1/s2_sa_1 copy.avi",
        "stray.avi",
    )
    return root


def test_enterface_clips_from_folders(enterface_root):
    result = scan_enterface(enterface_root)
    clips = by_id(result)
    assert sorted(clips) == [
        "s11_ha_3",
        "s16_su_3",
        "s1_an_1",
        "s1_an_2",
        "s1_ha_1",
        "s2_sa_1",
        "s6_an_1",
        "s6_an_2",
        "s6_di_1",
    ]
    assert result.labels == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    sub11 = clips["s11_ha_3"]
    assert (sub11.speaker, sub11.label_name, sub11.label) == ("subject_11", "happiness", 3)
    assert sub11.extra == {"subject": 11, "sentence": 3, "file_name": "s12_ha_3.avi", "sentence_folder": True}
    assert clips["s6_an_2"].extra["sentence_folder"] is False
    for clip in clips.values():
        assert clip.audio_path == clip.video_path and clip.video_path.endswith(".avi")
    assert {c.speaker for c in clips.values()} == {"subject_01", "subject_02", "subject_06", "subject_11", "subject_16"}


def test_enterface_reports_irregular_files(enterface_root):
    result = scan_enterface(enterface_root)
    assert problems_of(result, UNKNOWN_FILE) == ["Thumbs.db", "notes.txt", "stray.avi"]
    assert problems_of(result, UNKNOWN_LABEL) == ["s2_jo_1.avi"]
    assert problems_of(result, BAD_NAME) == ["s2_an_1.avi", "s6_fe.avi"]
    assert problems_of(result, DUPLICATE) == ["s2_sa_1.avi"]  # sorted: "s2_sa_1 copy.avi" came first
    n_files = sum(1 for p in enterface_root.rglob("*") if p.is_file())
    assert len(result.clips) + len(result.problems) == n_files


# ---------------------------------------------------------------- IEMOCAP

SESSION1_EVALUATION = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
[10.0000 - 11.5000]\tSes01F_impro01_M001\texc\t[3.0000, 3.5000, 3.0000]
[12.0000 - 13.0000]\tSes01F_impro01_F002\tfru\t[2.0000, 3.0000, 3.0000]
[14.0000 - 15.0000]\tSes01F_impro01_M003\txxx\t[2.0000, 3.0000, 3.0000]
[16.0000 - 17.0000]\tSes01F_impro01_F004\tang\t[1.5000, 4.0000, 4.0000]
[18.0000 - 19.0000]\tSes01F_impro01_M005\tsad\t[1.5000, 2.0000, 2.0000]
[unreadable
"""
SESSION2_EVALUATION = "[1.0000 - 2.0000]\tSes02M_script01_1_F000\thap\t[4.0000, 3.0000, 3.0000]\n"


@pytest.fixture
def iemocap_root(tmp_path: Path) -> Path:
    root = tmp_path / "IEMOCAP_full_release"
    touch(root, "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt", text=SESSION1_EVALUATION)
    touch(root, "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt", text=SESSION2_EVALUATION)
    wavs = "Session1/sentences/wav/Ses01F_impro01"
    touch(
        root,
        *(f"{wavs}/Ses01F_impro01_{turn}.wav" for turn in ("F000", "M001", "F002", "M003", "F004")),
        f"{wavs}/Ses01F_impro01_F999.wav",  # no evaluation line
        "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F000.wav",
    )
    return root


def test_iemocap_four_classes_with_excited_merged(iemocap_root):
    result = scan_iemocap(iemocap_root)
    clips = by_id(result)
    assert result.labels == ["neutral", "happy", "angry", "sad"]
    assert {k: c.label_name for k, c in clips.items()} == {
        "Ses01F_impro01_F000": "neutral",
        "Ses01F_impro01_M001": "happy",
        "Ses01F_impro01_F004": "angry",
        "Ses02M_script01_1_F000": "happy",
    }
    assert {c.speaker for c in clips.values()} == {"Ses01F", "Ses01M", "Ses02F"}
    excited = clips["Ses01F_impro01_M001"]
    assert excited.extra["source_label"] == "exc" and excited.extra["session"] == 1
    assert excited.extra["activation"] == 3.5 and excited.extra["improvised"] is True
    assert excited.video_path is None and excited.audio_path.endswith("Ses01F_impro01_M001.wav")
    assert clips["Ses02M_script01_1_F000"].extra["dialog"] == "Ses02M_script01_1"


def test_iemocap_problems(iemocap_root):
    result = scan_iemocap(iemocap_root)
    assert result.problem_counts() == {
        BAD_NAME: 1,
        MISSING_FILE: 1,
        OUT_OF_SCOPE: 2,
        UNKNOWN_FILE: 1,
    }
    assert problems_of(result, OUT_OF_SCOPE) == ["Ses01F_impro01_F002.wav", "Ses01F_impro01_M003.wav"]
    assert problems_of(result, MISSING_FILE) == ["Ses01F_impro01_M005.wav"]
    assert problems_of(result, UNKNOWN_FILE) == ["Ses01F_impro01_F999.wav"]
    assert "frustration" in " ".join(p.reason for p in result.problems)


def test_iemocap_excited_kept_apart(iemocap_root):
    result = scan_iemocap(iemocap_root, merge_excited=False)
    assert "Ses01F_impro01_M001" not in by_id(result)
    assert len(result.clips) == 3
    assert problems_of(result, OUT_OF_SCOPE) == [
        "Ses01F_impro01_F002.wav",
        "Ses01F_impro01_M001.wav",
        "Ses01F_impro01_M003.wav",
    ]


def test_iemocap_sessions(iemocap_root):
    assert list(by_id(scan_iemocap(iemocap_root, sessions=[2]))) == ["Ses02M_script01_1_F000"]
    with pytest.raises(AvserError, match=r"sessions \[3\].*found sessions \[1, 2\]"):
        scan_iemocap(iemocap_root, sessions=[3])


def test_iemocap_speaker_is_the_utterance_gender():
    assert speaker_of("Ses01F_impro01_M013") == "Ses01M"
    assert speaker_of("Ses05M_script02_2_F010") == "Ses05F"
    assert speaker_of("garbage") is None


# ---------------------------------------------------------------- CREMA-D


@pytest.fixture
def cremad_root(tmp_path: Path) -> Path:
    root = tmp_path / "CREMA-D"
    touch(
        root,
        "AudioWAV/1001_DFA_ANG_XX.wav",
        "AudioWAV/1001_IEO_HAP_HI.wav",
        "AudioWAV/1002_TIE_NEU_XX.wav",
        "AudioWAV/1003_ITS_SAD_LO.wav",
        "AudioWAV/1002_XYZ_ANG_XX.wav",  # no such sentence
        "AudioWAV/1002_DFA_CAL_XX.wav",  # no such emotion
        "AudioWAV/1004_DFA.wav",
        "AudioWAV/notes.txt",
        "VideoFlash/1001_DFA_ANG_XX.flv",
        "VideoFlash/1005_MTI_FEA_MD.flv",  # video without its wav
        "VideoDemographics.csv",  # corpus tables are not clips
    )
    return root


def test_cremad_clips(cremad_root):
    result = scan_cremad(cremad_root)
    clips = by_id(result)
    assert sorted(clips) == [
        "1001_DFA_ANG_XX",
        "1001_IEO_HAP_HI",
        "1002_TIE_NEU_XX",
        "1003_ITS_SAD_LO",
        "1005_MTI_FEA_MD",
    ]
    assert result.labels == ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    both = clips["1001_DFA_ANG_XX"]
    assert (both.speaker, both.label_name, both.label) == ("1001", "anger", 0)
    assert both.audio_path.endswith(".wav") and both.video_path.endswith(".flv")
    assert both.extra == {"actor": "1001", "sentence": "DFA", "intensity": "unspecified"}
    video_only = clips["1005_MTI_FEA_MD"]
    assert video_only.audio_path == video_only.video_path  # sound from the video's own track
    assert clips["1003_ITS_SAD_LO"].extra["intensity"] == "low"
    assert problems_of(result, BAD_NAME) == ["1002_XYZ_ANG_XX.wav", "1004_DFA.wav"]
    assert problems_of(result, UNKNOWN_LABEL) == ["1002_DFA_CAL_XX.wav"]
    assert problems_of(result, UNKNOWN_FILE) == ["notes.txt"]


def test_cremad_audio_only_and_flat_copy(cremad_root, tmp_path):
    audio = by_id(scan_cremad(cremad_root, include_video=False))
    assert len(audio) == 4 and all(c.video_path is None for c in audio.values())
    flat = tmp_path / "flat"
    touch(flat, "1010_WSI_DIS_MD.wav")
    assert [c.label_name for c in scan_cremad(flat).clips] == ["disgust"]


# ---------------------------------------------------------------- symbolic links


def linked_copy(real: Path, link_root: Path, folders: list[str]) -> Path:
    """``link_root`` holding a symbolic link per folder of ``real`` (how a
    corpus spread over disks is often assembled)."""
    link_root.mkdir()
    for name in folders:
        (link_root / name).symlink_to(real / name, target_is_directory=True)
    return link_root


def test_ravdess_actor_folders_as_symbolic_links(ravdess_root, tmp_path):
    linked = linked_copy(ravdess_root, tmp_path / "linked", ["Actor_01", "Actor_02"])
    direct, through_links = scan_ravdess(ravdess_root), scan_ravdess(linked)
    assert sorted(by_id(through_links)) == sorted(by_id(direct)) and through_links.clips
    assert through_links.problem_counts() == direct.problem_counts()
    # Paths keep the link's name (where the user put the corpus).
    assert all(c.audio_path or c.video_path for c in through_links.clips)
    assert all(str(linked) in (c.audio_path or c.video_path) for c in through_links.clips)


def test_real_ravdess_through_linked_actor_folders(shared_data, tmp_path):
    real = shared_data / "ravdess-speech-16k"
    actors = sorted(p.name for p in real.iterdir() if p.is_dir())
    linked = linked_copy(real, tmp_path / "linked", actors)
    assert len(scan_ravdess(linked).clips) == 960


def test_a_symbolic_link_loop_is_read_once(ravdess_root):
    before = scan_ravdess(ravdess_root)
    (ravdess_root / "Actor_01" / "loop").symlink_to(ravdess_root, target_is_directory=True)
    after = scan_ravdess(ravdess_root)  # terminates, and sees no file twice
    assert after == before and len(after.clips) == 5


def test_enterface_subject_folder_as_a_link(enterface_root, tmp_path):
    base = enterface_root / "enterface database"
    linked = linked_copy(base, tmp_path / "linked", [p.name for p in base.iterdir()])
    assert sorted(by_id(scan_enterface(linked))) == sorted(by_id(scan_enterface(enterface_root)))


def test_iemocap_linked_wav_folder_still_reports_unlabelled_files(iemocap_root, tmp_path):
    wav = iemocap_root / "Session1/sentences/wav"
    moved = tmp_path / "elsewhere"
    (wav / "Ses01F_impro01").rename(moved)
    (wav / "Ses01F_impro01").symlink_to(moved, target_is_directory=True)
    result = scan_iemocap(iemocap_root)
    assert problems_of(result, UNKNOWN_FILE) == ["Ses01F_impro01_F999.wav"]
    assert "Ses01F_impro01_F000" in by_id(result)


# ---------------------------------------------------------------- empty scans, bad manifests


def test_a_scan_without_clips_names_the_root_and_the_expected_names(ravdess_root, tmp_path):
    empty = tmp_path / "not-ravdess"
    touch(empty, "readme.txt", "Actor_01/clip.wav")
    result = scan_ravdess(empty)
    with pytest.raises(AvserError, match=r"no ravdess clips found under .*not-ravdess.*"
                                         r"03-01-06-01-02-01-01\.wav.*2 file\(s\) seen"):
        require_clips("ravdess", empty, result)
    for corpus in SCANNERS:
        with pytest.raises(AvserError, match=f"expected {re.escape(EXPECTED_FILES[corpus])}"):
            require_clips(corpus, tmp_path, ScanResult(clips=[]))
    found = scan_ravdess(ravdess_root)
    assert require_clips("ravdess", ravdess_root, found) is found


def test_manifest_command_exits_2_without_writing_an_empty_manifest(tmp_path, capsys):
    root = tmp_path / "corpus"
    touch(root, "Actor_01/notes.txt")
    out = tmp_path / "manifest.parquet"
    argv = ["manifest", "--corpus", "ravdess", "--root", str(root), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root) in err and "seven two-digit codes" in err
    assert not out.exists()


def test_manifest_command_with_linked_actor_folders(ravdess_root, tmp_path, capsys):
    linked = linked_copy(ravdess_root, tmp_path / "linked", ["Actor_01", "Actor_02"])
    out = tmp_path / "manifest.parquet"
    assert cli.main(["manifest", "--corpus", "ravdess", "--root", str(linked), "--out", str(out)]) == 0
    assert len(read_clips(out)) == 5


@pytest.mark.parametrize("option, message", [
    ("include_song", r"--option 'include_song' is not KEY=VALUE"),
    ("=true", r"is not KEY=VALUE"),
    ("modalities=[audio_only", r"--option 'modalities=\[audio_only'.*not valid YAML"),
])
def test_manifest_command_refuses_a_malformed_option(ravdess_root, tmp_path, capsys, option, message):
    out = tmp_path / "manifest.parquet"
    argv = ["manifest", "--corpus", "ravdess", "--root", str(ravdess_root), "--out", str(out),
            "--option", option]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def bad_manifest(tmp_path: Path, column: str, value) -> Path:
    frame = scan_ravdess_frame(tmp_path)
    frame[column] = frame[column].astype(str)  # a column of text, as a hand-edited CSV makes
    frame.loc[1, column] = value
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path, index=False)
    return path


def scan_ravdess_frame(tmp_path: Path):
    root = tmp_path / "r"
    touch(root, "Actor_01/03-01-01-01-01-01-01.wav", "Actor_01/03-01-05-02-01-01-01.wav")
    return scan_ravdess(root).to_frame()


@pytest.mark.parametrize("column, value, message", [
    ("label", "angry", r"label 'angry' is not an integer"),
    ("label", "4.5", r"label '4.5' is not an integer"),
    ("extra", "{not json", r"extra '\{not json' is not valid JSON"),
    ("extra", "[1, 2]", r"extra must be a JSON object"),
])
def test_a_bad_manifest_row_names_the_file_and_the_clip(tmp_path, column, value, message):
    path = bad_manifest(tmp_path, column, value)
    with pytest.raises(AvserError, match=rf"manifest {re.escape(str(path))}: clip 03-01-05-02-01-01-01: {message}"):
        read_manifest(path)
    with pytest.raises(AvserError, match=message):
        read_clips(path)


def test_integral_labels_of_other_types_are_read(tmp_path):
    path = bad_manifest(tmp_path, "label", "4")
    assert [c.label for c in read_clips(path)] == [0, 4]


# ---------------------------------------------------------------- registry


def test_scan_corpus_dispatches_and_checks(ravdess_root, iemocap_root):
    assert set(SCANNERS) == {"ravdess", "enterface", "iemocap", "cremad", "synthetic"}
    assert scan_corpus("ravdess", ravdess_root) == scan_ravdess(ravdess_root)
    assert len(scan_corpus("iemocap", iemocap_root, merge_excited=False).clips) == 3
    with pytest.raises(AvserError, match=r"unknown corpus 'savee'.*cremad.*synthetic"):
        scan_corpus("savee", ravdess_root)
    with pytest.raises(AvserError, match=r"include_sng.*include_song"):
        scan_corpus("ravdess", ravdess_root, include_sng=True)


def test_synthetic_scanner_is_imported_on_use(monkeypatch, tmp_path):
    calls = []

    def fake_scan(root):
        calls.append(root)
        return ScanResult(clips=[], labels=["a", "b"])

    module = types.ModuleType("avser.data.synthetic")
    module.scan_synthetic = fake_scan
    monkeypatch.setitem(sys.modules, "avser.data.synthetic", module)
    assert scan_corpus("synthetic", tmp_path).labels == ["a", "b"]
    assert calls == [tmp_path]
    with pytest.raises(AvserError, match="unknown option"):
        scan_corpus("synthetic", tmp_path, size=3)


def test_problem_summary_groups_by_kind(ravdess_root):
    text = summarize_problems(scan_ravdess(ravdess_root).problems, per_kind=1)
    assert "bad_name: 2" in text and "... and 1 more" in text
    assert summarize_problems([]) == "no problems"
