"""Video and audio in the decoders: vocabulary, Processor round-trips and shapes, documents, generation, errors.

Audio feature tests need librosa and soundfile (the `audio` extra, pulled in by `dev`); synthesis tests need the
Debian package espeak-ng and skip without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.lm import Decoder, ModalityConstraint, Processor, Vocabulary, config_from_name, generate
from tessera.lm.video import VideoClip, load_video, sample_video_question, to_video_tensor, video_answer_choices

librosa = pytest.importorskip("librosa", reason="audio features need librosa (pip install 'tessera[audio]')")
sf = pytest.importorskip("soundfile", reason="audio files need soundfile (pip install 'tessera[audio]')")

from tessera.lm.audio import (  # noqa: E402
    SAMPLE_RATE,
    AudioClip,
    AudioTokenizer,
    AudioTokenizerConfig,
    SpokenCorpus,
    SpokenCorpusConfig,
    espeak_available,
    load_audio,
    log_mel,
    spoken_questions,
    spoken_words,
    synthesize,
)
from tessera.lm.processor import AudioCodes  # noqa: E402

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="needs the Debian package espeak-ng (apt-get install espeak-ng)")


def _tone(seconds: float = 0.5, hz: float = 440.0, sr: int = SAMPLE_RATE) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * torch.pi * hz * t) * torch.linspace(0.2, 1, t.numel())).float()


@pytest.fixture(scope="module")
def audio_vocab() -> Vocabulary:
    return Vocabulary.default(image_codebook_size=512, audio_codebook_size=64)


@pytest.fixture(scope="module")
def audio_tokenizer() -> AudioTokenizer:
    torch.manual_seed(0)
    return AudioTokenizer(AudioTokenizerConfig(codebook_size=64, hidden=32, codebook_dim=16)).eval()


@pytest.fixture(scope="module")
def proc(audio_vocab, audio_tokenizer) -> Processor:
    from tests.lm.conftest import PaletteTokenizer

    return Processor(audio_vocab, PaletteTokenizer(), audio_tokenizer=audio_tokenizer)


# -- vocabulary --------------------------------------------------------------------------------------------------------
def test_audio_range_follows_the_image_codes_without_moving_them(vocab, audio_vocab, tmp_path):
    assert audio_vocab.code_range("image") == vocab.code_range("image")
    lo, hi = audio_vocab.code_range("audio")
    assert lo == vocab.code_range("image")[1] and hi - lo == 64
    assert audio_vocab.size % 64 == 0 and audio_vocab.size >= hi
    for name in ("<boa>", "<eoa>", "<bov>", "<eov>"):
        assert audio_vocab.token_id(name) < len(audio_vocab._special)
    assert (audio_vocab.boa_id, audio_vocab.eoa_id, audio_vocab.bov_id, audio_vocab.eov_id) == tuple(
        audio_vocab.token_id(t) for t in ("<boa>", "<eoa>", "<bov>", "<eov>"))
    audio_vocab.save(tmp_path)  # vocab.json is written with sorted keys: "audio" before "image"
    again = Vocabulary.load(tmp_path)
    assert again.code_ranges == audio_vocab.code_ranges and again.size == audio_vocab.size


# -- video -------------------------------------------------------------------------------------------------------------
def test_video_round_trip_and_shapes(proc):
    frames = torch.rand(5, 3, 32, 32)
    enc = proc.encode(["<start_of_turn>", VideoClip(frames), "what moves?"])
    v = proc.vocab
    ids = enc.ids
    start = ids.index(v.bov_id)
    assert ids[start + 1] == v.boi_id
    block = ids[start : ids.index(v.eov_id) + 1]
    assert len(block) == 2 + 5 * (proc.image_tokens + 2)
    assert block.count(v.boi_id) == 5 and block.count(v.eoi_id) == 5
    out = proc.decode(ids)
    clips = [x for x in out if isinstance(x, torch.Tensor)]
    assert len(clips) == 1 and clips[0].shape == (5, 3, 32, 32)
    # frames pass through the image tokenizer: decoding gives the tokenizer's reconstruction of every frame
    codes = proc.encode_images(list(frames))
    assert torch.allclose(clips[0], proc.decode_codes(codes))
    assert proc.encode(VideoClip(clips[0])).ids[1:] == proc.encode(clips[0]).ids[1:] == block  # a 4-D tensor is a clip too
    assert any(isinstance(x, str) and "what moves?" in x for x in out)


def test_video_inputs_are_checked():
    with pytest.raises(ValueError, match="1 to 16 frames"):
        to_video_tensor(torch.rand(17, 3, 8, 8))
    with pytest.raises(ValueError, match="one size"):
        to_video_tensor([torch.rand(3, 8, 8), torch.rand(3, 8, 9)])
    with pytest.raises(ValueError, match=r"\(T, H, W, C\)"):
        to_video_tensor(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(TypeError, match="video clip"):
        to_video_tensor(3)
    clip = to_video_tensor(np.full((4, 8, 8, 3), 255, np.uint8))
    assert clip.shape == (4, 3, 8, 8) and float(clip.max()) == 1.0


def test_load_video_from_npy_gif_and_folder(tmp_path):
    from PIL import Image

    arr = (np.random.default_rng(0).random((4, 16, 16, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "clip.npy", arr)
    assert torch.allclose(load_video(tmp_path / "clip.npy"), torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255)
    frames = [Image.fromarray(a) for a in arr]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    assert load_video(tmp_path / "clip.gif").shape == (4, 3, 16, 16)
    (tmp_path / "frames").mkdir()
    for i, f in enumerate(frames):
        f.save(tmp_path / "frames" / f"{i:02d}.png")
    assert torch.allclose(load_video(tmp_path / "frames"), load_video(tmp_path / "clip.npy"))
    with pytest.raises(FileNotFoundError, match="video not found"):
        load_video(tmp_path / "missing.gif")
    (tmp_path / "bad.gif").write_bytes(b"not a gif")
    with pytest.raises(ValueError, match="bad.gif"):
        load_video(tmp_path / "bad.gif")


def test_sprite_clips_and_their_questions_are_consistent():
    from tessera.data.video import render_sprite_clips

    clips, plans = render_sprite_clips(40, "test", frames=6, image_size=32, seed=3)
    again, _ = render_sprite_clips(40, "test", frames=6, image_size=32, seed=3)
    assert clips.shape == (40, 6, 32, 32, 3) and clips.dtype == np.uint8 and np.array_equal(clips, again)
    train, _ = render_sprite_clips(40, "train", frames=6, image_size=32, seed=3)
    assert not np.array_equal(train, clips)
    rng = np.random.default_rng(0)
    kinds = set()
    for plan in plans:
        for qtype in ("direction", "count", "order"):
            kind, q, a = sample_video_question(plan, rng, qtype)
            kinds.add(kind)
            if kind == "direction":
                assert a in video_answer_choices("direction") and any(sp["direction"] == a and sp["name"] in q for sp in plan["sprites"])
            elif kind == "count":
                assert a == ("zero", "one", "two", "three", "four")[len(plan["events"])]
            else:
                first = min(plan["sprites"], key=lambda sp: sp["appear_frame"])
                assert a == f"the {first['name']}" and first["name"] in q
    assert kinds == {"direction", "count", "order"}
    # direction answers follow the pixels: a lone sprite's colour mass moves the stated way
    checked = 0
    for clip, plan in zip(clips, plans, strict=True):
        if len(plan["sprites"]) == 1 and plan["sprites"][0]["speed_class"] == "fast" and plan["sprites"][0]["disappear_frame"] is None:
            diff = np.abs(clip.astype(int) - clip[:, :1, :1].astype(int)).sum(-1)  # distance from the background colour
            ys, xs = np.nonzero(diff[0] > 60)
            ye, xe = np.nonzero(diff[-1] > 60)
            dx, dy = xe.mean() - xs.mean(), ye.mean() - ys.mean()
            moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert moved == plan["sprites"][0]["direction"]
            checked += 1
    assert checked >= 3


# -- audio -------------------------------------------------------------------------------------------------------------
def test_log_mel_shape_and_normalisation():
    w = _tone(0.5)
    mel = log_mel(w)
    assert mel.shape == (64, w.numel() // 160 + 1) and mel.dtype == torch.float32
    assert abs(float(mel.max()) - 1.0) < 1e-5 and float(mel.min()) >= -1.0 - 1e-5  # 80 dB below the peak -> [-1, 1]
    assert torch.allclose(log_mel(w * 0.1), mel, atol=1e-4)  # loudness cancels
    with pytest.raises(ValueError, match="mono"):
        log_mel(torch.rand(2, 2, 800))
    with pytest.raises(TypeError, match="float"):
        log_mel(torch.zeros(1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="NaN"):
        log_mel(torch.full((1000,), float("nan")))
    with pytest.raises(ValueError, match="at least 400"):
        log_mel(torch.zeros(100))


def test_audio_tokenizer_shapes_training_signal_and_save_load(audio_tokenizer, tmp_path):
    mel = torch.stack([log_mel(_tone(0.5, hz)) for hz in (300, 600)])  # (2, 64, 51)
    codes = audio_tokenizer.encode(mel)
    assert codes.shape == (2, 13) and codes.dtype == torch.int64 and int(codes.max()) < 64
    assert audio_tokenizer.decode(codes).shape == (2, 64, 52)
    fresh = AudioTokenizer(audio_tokenizer.config).train()
    out = fresh(mel)
    assert out.reconstruction.shape == (2, 64, 52) and out.loss.requires_grad and torch.isfinite(out.loss)
    out.loss.backward()  # the rotation trick carries the reconstruction gradient through the codes to the encoder
    assert fresh.encoder[0].weight.grad is not None and float(fresh.encoder[0].weight.grad.abs().sum()) > 0
    audio_tokenizer.save_pretrained(tmp_path / "atok")
    again = AudioTokenizer.from_pretrained(tmp_path / "atok")
    assert torch.equal(again.encode(mel), codes)
    with pytest.raises(ValueError, match=r"\(B, 64, F\)"):
        audio_tokenizer.encode(torch.rand(2, 32, 40))
    with pytest.raises(FileNotFoundError, match="config.json"):
        AudioTokenizer.from_pretrained(tmp_path)


def test_audio_round_trip_through_the_processor(proc, audio_tokenizer):
    clip = AudioClip(_tone(0.8), SAMPLE_RATE)
    enc = proc.encode(["question:", clip, " answer:"])
    v = proc.vocab
    a, b = enc.ids.index(v.boa_id), enc.ids.index(v.eoa_id)
    n = b - a - 1
    assert n == -(-(clip.waveform.numel() // 160 + 1) // 4)
    assert all(v.is_code(torch.tensor(enc.ids[a + 1 : b]), "audio"))
    out = proc.decode(enc.ids)
    decoded = [x for x in out if isinstance(x, AudioCodes)]
    assert len(decoded) == 1 and torch.equal(decoded[0].codes, proc.audio_codes(clip))
    assert decoded[0].mel.shape == (64, 4 * n)
    assert out[0] == "question:" and out[-1] == " answer:"
    # the same speech at another sample rate gives (almost) the same codes
    from tessera.lm.audio import resample

    at_8k = AudioClip(torch.from_numpy(resample(clip.waveform.numpy(), SAMPLE_RATE, 8000)), 8000)
    same = (proc.audio_codes(at_8k) == proc.audio_codes(clip)).float().mean()
    assert same > 0.6
    with pytest.raises(ValueError, match="no audio tokenizer"):
        Processor(v, proc.image_tokenizer).encode(clip)
    with pytest.raises(ValueError, match="audio range"):
        Processor(Vocabulary.default(512), audio_tokenizer=audio_tokenizer)


def test_user_wav_files_load_through_the_same_path(tmp_path, proc):
    stereo = np.stack([_tone(0.5, sr=22050).numpy(), _tone(0.5, sr=22050).numpy()], 1)
    sf.write(tmp_path / "speech.wav", stereo, 22050)
    w = load_audio(tmp_path / "speech.wav")
    assert w.dtype == np.float32 and w.ndim == 1 and abs(len(w) - 8000) <= 2
    clip = AudioClip.from_file(tmp_path / "speech.wav")
    assert proc.encode(clip).ids[1] == proc.vocab.boa_id
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "noise.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(ValueError, match="noise.wav: not a readable sound file"):
        load_audio(tmp_path / "noise.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 3, np.float32), 16000)
    with pytest.raises(ValueError, match="more than the limit"):
        load_audio(tmp_path / "long.wav", max_seconds=2)


@needs_espeak
def test_espeak_synthesis_and_held_out_speakers():
    w = synthesize("seven", "en-gb+f2", pitch=60, speed=160)
    assert w.dtype == np.float32 and w.ndim == 1 and 0.2 < len(w) / SAMPLE_RATE < 2.0 and np.abs(w).max() > 0.05
    slow = synthesize("seven", "en-gb+f2", pitch=60, speed=90)
    assert len(slow) > len(w)
    cfg = SpokenCorpusConfig()
    train, test = set(cfg.speakers("train")), set(cfg.speakers("test"))
    assert len(test) == cfg.test_speakers and not train & test and len(train | test) == len(cfg.accents) * len(cfg.variants)


# -- documents and generation --------------------------------------------------------------------------------------
def _fake_spoken(tokenizer: AudioTokenizer) -> SpokenCorpus:
    """Tones standing in for speech (no espeak-ng needed): one clip per text and split."""
    items, waves = [], []
    for kind, texts in (("word", spoken_words()), ("question", spoken_questions())):
        for i, text in enumerate(texts):
            for split in ("train", "test"):
                items.append({"text": text, "kind": kind, "split": split, "voice": "x", "pitch": 0, "speed": 0})
                waves.append(_tone(0.3 + 0.01 * (i % 7), 200 + 10 * i).numpy())
    corpus = SpokenCorpus(SpokenCorpusConfig(), items, waves)
    corpus.tokenize(tokenizer)
    return corpus


@pytest.fixture(scope="module")
def small_corpus(audio_tokenizer):
    from tessera.data.video import render_sprite_clips
    from tessera.lm.corpus import CorpusConfig, build_corpus
    from tests.lm.conftest import PaletteTokenizer

    cfg = CorpusConfig(train_scenes=60, test_scenes=40, glyph_train_renders=1, glyph_test_renders=1, video_train_clips=12,
                       video_test_clips=12, mixture={"caption": 1.0, "video": 1.0, "audio": 1.0, "spoken_vqa": 1.0})
    video = {s: render_sprite_clips(12, s, 4, 32, seed=0) for s in ("train", "test")}
    return build_corpus(cfg, PaletteTokenizer(), video=video, audio=_fake_spoken(audio_tokenizer))


def test_video_audio_and_spoken_vqa_documents(small_corpus, audio_vocab):
    from tessera.lm.corpus import sample_document
    from tessera.lm.data import DocumentEncoder, PackedBatches
    from tessera.lm.objective import IMAGE, SKIP, TEXT

    enc = DocumentEncoder(small_corpus, audio_vocab)
    v = audio_vocab
    rng = np.random.default_rng(0)
    vid = sample_document(small_corpus, rng, "test", "video")
    ids, mods, _ = enc(vid)
    assert ids[1] == v.bov_id and ids.count(v.boi_id) == 4 and v.eov_id in ids
    assert sum(m == IMAGE for m in mods) == 4 * 64
    aud = sample_document(small_corpus, rng, "test", "audio")
    ids, mods, _ = enc(aud)
    a, b = ids.index(v.boa_id), ids.index(v.eoa_id)
    assert all(m == SKIP for m in mods[a:b]) and mods[b] == TEXT  # speech is read, never a target
    assert aud.segments[-1] == f" {aud.meta['answer']}." and aud.meta["answer"] in spoken_words()
    svqa = sample_document(small_corpus, rng, "test", "spoken_vqa")
    ids, _, _ = enc(svqa)
    assert ids.index(v.boi_id) < ids.index(v.boa_id) < ids.index(v.eoa_id)
    q_clip = small_corpus.audio.items[svqa.segments[1].index]
    assert q_clip["text"] == svqa.meta["question"] and q_clip["split"] == "test"
    batch = PackedBatches(small_corpus, v, 512, 2)(0)
    assert batch["input_ids"].shape == (2, 512) and int(batch["input_ids"].max()) < v.size


def test_audio_and_video_prompts_generate(proc, small_corpus):
    from tessera.lm.evaluate_modalities import spoken_vqa_accuracy, spoken_word_accuracy, video_qa_accuracy

    torch.manual_seed(0)
    model = Decoder(config_from_name("debug", vocab_size=proc.vocab.size, max_seq_len=1024)).eval()
    clip = torch.from_numpy(small_corpus.video["test"].clips[0]).permute(0, 3, 1, 2).float() / 255
    prompts = [proc.encode([VideoClip(clip), "question: which way does it move? answer:"]),
               proc.encode([AudioClip(_tone(0.6)), "transcript:"]),
               proc.encode([torch.rand(3, 32, 32), AudioClip(_tone(0.9)), "answer:"])]
    batch = proc.collate(prompts)
    out = generate(model, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6,
                   constraint=ModalityConstraint(proc.vocab, proc.image_tokens, allow_images=False))
    assert out.tokens.shape == (3, 6)
    a_lo, a_hi = proc.vocab.code_range("audio")
    i_lo, i_hi = proc.vocab.code_range("image")
    for row in out.tokens.tolist():  # text answers: never a stray image or audio code
        assert not any(a_lo <= t < a_hi or i_lo <= t < i_hi for t in row)
    for fn in (video_qa_accuracy, spoken_word_accuracy, spoken_vqa_accuracy):
        r = fn(model, proc, small_corpus, n=6, batch_size=3)
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["chance"] < 1.0 and r["n"] == 6


@needs_espeak
@pytest.mark.slow
@pytest.mark.integration
def test_cli_builds_audio_trains_the_modalities_debug_config_and_answers_audio_and_video_prompts(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from PIL import Image

    from tessera.cli import main
    from tessera.lm.pretrained import load_pretrained

    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    assert main(["lm", "audio-build", "--debug", "--steps", "20"]) == 0
    assert "held-out speakers" in capsys.readouterr().out
    config = Path(__file__).resolve().parents[2] / "configs" / "lm" / "modalities_debug.yaml"
    run = tmp_path / "run"
    assert main(["lm", "train", "--config", str(config), "--run-dir", str(run)]) == 0
    final = run / "final"
    assert (final / "audio_tokenizer" / "model.safetensors").is_file()
    model, proc = load_pretrained(final)
    assert proc.audio_tokenizer is not None and model.cfg.vocab_size == proc.vocab.size
    wav = tmp_path / "question.wav"
    sf.write(wav, synthesize("what shape is at the top left", "en-us+m3"), SAMPLE_RATE)
    clip = tmp_path / "clip.npy"
    np.save(clip, (np.random.default_rng(0).random((4, 16, 16, 3)) * 255).astype(np.uint8))
    image = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)).save(image)
    capsys.readouterr()
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "<image><audio>answer:", "--image", str(image),
                 "--audio", str(wav), "--max-new-tokens", "4", "--no-images"]) == 0
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "<video>question: which way does it move? answer:",
                 "--video", str(clip), "--max-new-tokens", "4", "--no-images"]) == 0
    assert main(["lm", "eval", "--checkpoint", str(final), "--quick", "--json", str(tmp_path / "eval.json")]) == 0
    import json

    got = json.loads((tmp_path / "eval.json").read_text())
    assert {"video_qa", "spoken_word", "spoken_vqa"} <= set(got) and 0 <= got["spoken_word"]["accuracy"] <= 1
    capsys.readouterr()
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "<audio><audio>", "--audio", str(wav)]) == 1
    assert "2 <audio> markers but 1 --audio files" in capsys.readouterr().err
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "<audio>", "--audio", str(tmp_path / "nope.wav")]) == 1
    assert "audio file not found" in capsys.readouterr().err
