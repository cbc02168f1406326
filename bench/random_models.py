"""Random-weight models of the production architectures, built offline into a folder (nothing is downloaded).

`pipelines/humove.yaml` names real checkpoints that tests and a fresh GPU node do not have. Each function here
writes a stand-in with the same architecture, file format and loading path, at a size chosen by its knobs
(`tiny` for CPU tests, the real size for GPU throughput), so the production stages run their real backends:

| function          | stands in for                                                        | written             |
|-------------------|----------------------------------------------------------------------|---------------------|
| `yolo`            | `yolo11x.pt` (ultralytics YOLO11 detector, COCO classes)             | `.pt`               |
| `dwpose`          | `dw-ll_ucoco_384.onnx` (DWPose, COCO-WholeBody 133, SimCC head)      | `.onnx`             |
| `clip_aesthetic`  | `openai/clip-vit-large-patch14` (both towers, tokenizer, image       | folder + `.pth`     |
|                   | processor) + `sac+logos+ava1-l14-linearMSE.pth`                      |                     |
| `keyword_lm`      | `Qwen/Qwen2.5-7B-Instruct` (Qwen2 causal LM, Qwen2 tokenizer)        | transformers folder |
| `camerahmr`       | `camerahmr_checkpoint_cleaned.ckpt`, `cam_model_cleaned.ckpt`        | folder              |
| `smpl_body`       | `SMPL_NEUTRAL.npz` (converted SMPL; licensed, never redistributed)   | folder              |
| `fake_keyword_lm` | the keywords LLM: a SCRIPTED FAKE (below)                            | transformers folder |
| `fake_qwen25_vl`  | `Qwen/Qwen2.5-VL-7B-Instruct` (model + processor): a SCRIPTED FAKE   | transformers folder |

`build_all(folder, size)` writes them all and returns their paths (`ProductionModels`).

Random weights answer garbage, which the keywords and caption stages rightly refuse, and then nothing would reach
the shards. So the two `fake_*` language models are scripted fakes: random weights except the token embedding, the
output head and the projections that write into the residual stream (attention `o_proj`, MLP `down_proj`, set to
zero), which are set so that greedy decoding after the chat template's assistant turn spells one fixed answer
whatever the input (`script_answer`). The transformers code path (tokenizer, chat template, processor, vision
tower, batched `generate`) runs in full. They exist for the production-pipeline test and `make gpu-check` only:
their folders are named `fake-…` and hold a `FAKE_MODEL.md` saying so, and nothing in the installed package (no
stage default, no shipped pipeline) names this module (`tests/test_production_pipeline.py` checks that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# What the scripted fakes answer, whatever they are asked.
FAKE_KEYWORD_ANSWER = "- boxing"  # one bullet the keywords parser accepts for "Combat Sports" (fine category Boxing)
FAKE_CAPTION_ANSWER = ('{"appearance": "a person in plain clothes", ', '"background": "a plain room", ',
                  '"action": "the person moves", ', '"caption": "A person in plain clothes moves in a plain room."}')


# Person detector ---------------------------------------------------------------------------------------------

def yolo(folder: str | Path, scale: str = "n", person_logit: float | None = 3.0, seed: int = 0) -> str:
    """YOLO11 (`yolo11{scale}.yaml`: n, s, m, l, x; production uses x) with random weights, saved as a `.pt`
    that `YOLO(path)` loads like a released checkpoint → its path.

    A random detection head scores every box near zero (ultralytics initialises the class biases for rare
    objects), so no detection would pass ByteTrack's thresholds. `person_logit` sets the person-class bias of
    the coarsest (stride-32) output level, so a handful of large person boxes per frame score about
    sigmoid(person_logit); None keeps the head as initialised."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # ultralytics writes a settings file at import and fetches fonts and assets unless told it is offline
    os.environ.setdefault("YOLO_CONFIG_DIR", str(folder / "ultralytics-settings"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics import YOLO

    torch.manual_seed(seed)
    model = YOLO(f"yolo11{scale}.yaml")
    if person_logit is not None:
        with torch.no_grad():
            model.model.model[-1].cv3[-1][-1].bias[0] = person_logit  # Detect head, last level, class 0
    path = str(folder / f"yolo11{scale}-random.pt")
    model.save(path)
    return path


# Keypoints ---------------------------------------------------------------------------------------------------

DWPOSE_INPUT = (1, 3, 384, 288)                    # N, C, H, W of the released file (batch fixed at 1)
DWPOSE_OUTPUTS = {"simcc_x": (1, 133, 576), "simcc_y": (1, 133, 768)}  # SimCC split ratio 2


def dwpose(path: str | Path, channels: int = 8, depth: int = 1, seed: int = 0) -> str:
    """An ONNX file with `dw-ll_ucoco_384.onnx`'s interface: input `input` (1, 3, 384, 288), outputs `simcc_x`
    (1, 133, 576) and `simcc_y` (1, 133, 768) in (0, 1) → its path. Random convolutions: a stride-4 stem to
    `channels`, `depth` 3×3 conv + ReLU layers, a 1×1 conv to 133 maps (1, 133, 96, 72), averaged over rows
    (x) or columns (y) and projected to the SimCC bins. The outputs depend on the image. Compute grows with
    channels² × depth: channels 256, depth 8 is about 10 GFLOP per crop, of the order of the real RTMPose-l."""
    from onnx import numpy_helper
    from onnx.helper import make_node

    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [weight("stem", channels, 3, 4, 4), weight("to_keypoints", 133, channels, 1, 1),
             weight("bins_x", 72, 576), weight("bins_y", 96, 768)]
    nodes = [make_node("Conv", ["input", "stem"], ["h0"], strides=[4, 4]), make_node("Relu", ["h0"], ["a0"])]
    for layer in range(depth):
        inits.append(weight(f"conv{layer}", channels, channels, 3, 3))
        nodes += [make_node("Conv", [f"a{layer}", f"conv{layer}"], [f"h{layer + 1}"], pads=[1, 1, 1, 1]),
                  make_node("Relu", [f"h{layer + 1}"], [f"a{layer + 1}"])]
    nodes += [make_node("Conv", [f"a{depth}", "to_keypoints"], ["maps"]),            # (1, 133, 96, 72)
              make_node("ReduceMean", ["maps"], ["cols"], axes=[2], keepdims=0),     # (1, 133, 72)
              make_node("ReduceMean", ["maps"], ["rows"], axes=[3], keepdims=0),     # (1, 133, 96)
              make_node("MatMul", ["cols", "bins_x"], ["logits_x"]), make_node("Sigmoid", ["logits_x"], ["simcc_x"]),
              make_node("MatMul", ["rows", "bins_y"], ["logits_y"]), make_node("Sigmoid", ["logits_y"], ["simcc_y"])]
    return save_dwpose_graph(nodes, inits, path, "random-dwpose")


def save_dwpose_graph(nodes: list, initializers: list, path: str | Path, name: str) -> str:
    """Save an ONNX graph with DWPose's input and output names and shapes (opset 17), checked → its path."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(DWPOSE_INPUT))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape)) for out, shape in DWPOSE_OUTPUTS.items()],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return str(path)


# Aesthetic ---------------------------------------------------------------------------------------------------

CLIP_VIT_L14 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
CLIP_TINY = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}


def clip_encoder(folder: str | Path, vision: dict | None = None, image_size: int = 224, patch_size: int = 14,
                 projection_dim: int = 768, seed: int = 0) -> str:
    """A full CLIP checkpoint folder like `openai/clip-vit-large-patch14` → the folder: `CLIPModel` (a tiny text
    tower, and the vision tower), its `CLIPImageProcessor` config and `CLIPTokenizer` files (on a character
    vocabulary, `clip_tokenizer`), so the aesthetic stage's content-type prompts are encoded as in production.
    `vision` sets the vision tower's sizes (`CLIP_TINY` by default, `CLIP_VIT_L14` the real ones); image size,
    patch and the projection width the LAION head reads (768) are the real model's unless given."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={**(vision or CLIP_TINY), "image_size": image_size, "patch_size": patch_size},
        projection_dim=projection_dim,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def clip_tokenizer():
    """CLIP's own tokenizer class (`CLIPTokenizer`: lower-case, byte-pair pieces ending in `</w>`) on a character
    vocabulary with no merges: every letter or digit is a token, anything else the unknown token; 74 ids, within
    `clip_encoder`'s text vocabulary of 99."""
    from transformers import CLIPTokenizer

    characters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = {name: index for index, name in
             enumerate(["<|startoftext|>", "<|endoftext|>", *characters, *(f"{c}</w>" for c in characters)])}
    return CLIPTokenizer(vocab=vocab, merges=[])


def random_head(head, path: str | Path, seed: int = 2, std: float = 0.2) -> str:
    """Save an aesthetic head module (`LaionAestheticHead`, `AestheticV25Head`: the upstream key names) with
    N(0, std) weights as a `.pth` state dict → its path."""
    import torch

    torch.manual_seed(seed)
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=std)
    torch.save(head.state_dict(), path)
    return str(path)


def clip_aesthetic(folder: str | Path, vision: dict | None = None, image_size: int = 224) -> tuple[str, str]:
    """The `laion-v2` aesthetic predictor: `clip_encoder` in `<folder>/clip-vit-l14` and a random LAION MLP head
    (768→1024→128→64→16→1, key names `layers.{0,2,4,6,7}`) as `<folder>/sac+logos+ava1-l14-linearMSE.pth`
    → (encoder folder, head path)."""
    from humove.quality.aesthetic import LaionAestheticHead

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = clip_encoder(folder / "clip-vit-l14", vision, image_size)
    return encoder, random_head(LaionAestheticHead(), folder / "sac+logos+ava1-l14-linearMSE.pth")


# Language models ---------------------------------------------------------------------------------------------

def qwen2_tokenizer(pieces: tuple[str, ...] = ()):
    """A Qwen2 tokenizer (the real `Qwen2Tokenizer` class: byte-level BPE) with no merges — every byte is one
    token — Qwen's special tokens and a chat template, plus `pieces` as whole tokens. It survives
    `save_pretrained` / `AutoTokenizer.from_pretrained` unchanged (a plain character-level tokenizer does not:
    transformers re-reads a `qwen2` folder with Qwen2Tokenizer's own pre-tokenizer)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from humove.captioning.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    vocab = {char: index for index, char in enumerate(sorted(bytes_to_unicode().values()))}
    vocab.update({token: len(vocab) + index for index, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", extra_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.add_tokens([AddedToken(piece, special=False, normalized=False) for piece in pieces])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def script_answer(model, tokenizer, answer: str) -> None:
    """Set a decoder-only LM's weights so that greedy decoding after the generation prompt (which ends with
    "\\n") writes `answer`, then the end-of-turn token. Every layer's `o_proj` and `down_proj` are zeroed, so the
    last position's hidden state is its token's embedding; each token of the chain gets a one-hot embedding and
    the output head maps it to the next token. The chain's tokens must be distinct and fewer than the width."""
    import torch

    ids = tokenizer("\n" + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(set(ids[:-1])) < len(ids) - 1:
        raise ValueError(f"answer {answer!r}: its tokens repeat, so no bigram chain spells it")
    language = model.get_decoder()
    embed, head = language.embed_tokens.weight, model.get_output_embeddings().weight
    if len(ids) > embed.shape[1]:
        raise ValueError(f"answer {answer!r}: {len(ids)} tokens need a model at least that wide")
    with torch.no_grad():
        for layer in language.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head.zero_()
        for slot, (token, following) in enumerate(zip(ids[:-1], ids[1:], strict=True)):
            embed[token] = 0.0
            embed[token, slot] = 1.0
            head[following, slot] = 10.0


def _qwen2_lm(tokenizer, hidden_size: int, layers: int, seed: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)).eval()


def keyword_lm(folder: str | Path, hidden_size: int = 32, layers: int = 1, seed: int = 0) -> str:
    """A Qwen2 causal LM (the architecture of Qwen2.5-7B-Instruct, here `hidden_size` wide, `layers` deep) with
    random weights and its tokenizer (`qwen2_tokenizer`), as a transformers folder → the folder. It answers
    garbage."""
    tokenizer = qwen2_tokenizer()
    _qwen2_lm(tokenizer, hidden_size, layers, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def fake_keyword_lm(folder: str | Path, answer: str = FAKE_KEYWORD_ANSWER, hidden_size: int = 32,
                    seed: int = 0) -> str:
    """A SCRIPTED FAKE keywords LLM: `keyword_lm`'s architecture and tokenizer, its weights set by
    `script_answer` so that greedy decoding writes `answer` (default: one Combat Sports keyword) to any prompt,
    as a transformers folder → the folder (with `FAKE_MODEL.md` saying so). For tests only: it proves the code
    path, never a keyword."""
    tokenizer = qwen2_tokenizer()
    model = _qwen2_lm(tokenizer, hidden_size, 1, seed)
    script_answer(model, tokenizer, answer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return _mark_fake(folder, answer)


def fake_qwen25_vl(folder: str | Path, answer: tuple[str, ...] = FAKE_CAPTION_ANSWER) -> str:
    """A SCRIPTED FAKE captioner: a tiny Qwen2.5-VL (`humove.captioning.tiny.tiny_vl_model`) with its own
    processor class (`Qwen2_5_VLProcessor`), whose weights `script_answer` sets so that greedy decoding writes
    the JSON caption `answer` spells (its pieces are tokens of the `qwen2_tokenizer`) for any video, as a
    transformers folder that `AutoProcessor` / `AutoModelForImageTextToText` load → the folder (with
    `FAKE_MODEL.md` saying so). For tests only: it proves the code path, never a caption."""
    from humove.captioning.tiny import tiny_processor, tiny_vl_model

    processor = tiny_processor(qwen25=True)
    processor.tokenizer = qwen2_tokenizer(answer)
    model = tiny_vl_model(processor)
    script_answer(model, processor.tokenizer, "".join(answer))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return _mark_fake(folder, "".join(answer))


def _mark_fake(folder: str | Path, answer: str) -> str:
    """A model card that says what the folder is, for whoever finds it on disk."""
    (Path(folder) / "FAKE_MODEL.md").write_text(
        "# Scripted fake (humove bench.random_models), for tests only\n\nIts weights are set so that greedy decoding "
        f"answers\n\n    {answer!r}\n\nto any input. It proves that the code path runs; never use it for data.\n")
    return str(folder)


# Motion ------------------------------------------------------------------------------------------------------

def camerahmr(folder: str | Path, hmr_size: dict | None = None, flnet_size: dict | None = None,
              seed: int = 0) -> str:
    """CameraHMR + FLNet checkpoints under the official file names (`camerahmr_checkpoint_cleaned.ckpt`,
    `cam_model_cleaned.ckpt`) at the sizes the smpl stage's `hmr_size` / `flnet_size` settings name (None: the
    official ViT-H and HRNet-W48), written by `humove.hmr.random_weights.write_random_camerahmr` → the folder,
    which `smpl.weights_dir` reads."""
    from humove.hmr.random_weights import write_random_camerahmr

    write_random_camerahmr(folder, hmr_size, flnet_size, seed)
    return str(folder)


def smpl_body(folder: str | Path) -> str:
    """`SMPL_NEUTRAL.npz` in the converted-SMPL layout (`humove smpl convert`) holding the stand-in body
    (`humove.motion.body_model.build_standin_arrays`: SMPL's 6890 vertices and 24-joint tree, not a body
    scan) → the folder, for `body_model: smpl-neutral` with `smpl_dir` / `HUMOVE_SMPL_DIR`."""
    from humove.motion.body_model import build_standin_arrays

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "SMPL_NEUTRAL.npz", **build_standin_arrays())
    return str(folder)


# All ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProductionModels:
    """Paths of one set of stand-ins, in the shape `pipelines/humove.yaml`'s settings take them; `hmr_size` /
    `flnet_size`: the smpl stage settings of the CameraHMR files written (None: the official sizes)."""

    size: str
    yolo: str
    dwpose: str
    aesthetic_encoder: str
    aesthetic_head: str
    fake_keyword_lm: str
    camerahmr: str
    hmr_size: dict | None
    flnet_size: dict | None
    smpl_dir: str
    fake_caption_vl: str


def build_all(folder: str | Path, size: str = "tiny") -> ProductionModels:
    """Every stand-in under `folder`. `size`: "tiny" (seconds on a CPU; what the tests use) or "full" (the real
    sizes of the networks whose throughput a GPU check measures: YOLO11x, a DWPose-scale ONNX, CLIP ViT-L/14,
    CameraHMR ViT-H + FLNet HRNet-W48). The language models are tiny scripted fakes at both sizes: their
    production engine is vLLM, which `bench.bench_caption` measures on real checkpoints."""
    if size not in ("tiny", "full"):
        raise ValueError(f"size {size!r}: expected 'tiny' or 'full'")
    from humove.hmr.random_weights import SMALL_FLNET_SIZE, SMALL_HMR_SIZE

    folder = Path(folder)
    full = size == "full"
    encoder, head = clip_aesthetic(folder / "aesthetic", CLIP_VIT_L14 if full else CLIP_TINY)
    hmr_size, flnet_size = (None, None) if full else (SMALL_HMR_SIZE, SMALL_FLNET_SIZE)
    return ProductionModels(
        size=size,
        yolo=yolo(folder / "yolo", "x" if full else "n"),
        dwpose=dwpose(folder / "dwpose" / "dw-ll_ucoco_384.onnx", *((256, 8) if full else (8, 1))),
        aesthetic_encoder=encoder, aesthetic_head=head,
        fake_keyword_lm=fake_keyword_lm(folder / "fake-keyword-lm"),
        camerahmr=camerahmr(folder / "camerahmr", hmr_size, flnet_size), hmr_size=hmr_size, flnet_size=flnet_size,
        smpl_dir=smpl_body(folder / "smpl"),
        fake_caption_vl=fake_qwen25_vl(folder / "fake-qwen2.5-vl"),
    )
