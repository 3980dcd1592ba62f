"""Tiny models for the test suite (each one shaped after a real architecture it stands in for)."""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Conv-BN-ReLU6 stem, a depthwise-separable block with a residual add, pool, linear head."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.head = nn.Linear(w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


def tiny_conv_net(seed: int = 0, width: int = 16) -> TinyConvNet:
    torch.manual_seed(seed)
    net = TinyConvNet(width=width)
    for m in net.modules():  # non-trivial BN statistics, as a trained network has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def wide_conv_net(seed: int = 0) -> TinyConvNet:
    """TinyConvNet with 32 channels: its head's input is one int4 group."""
    return tiny_conv_net(seed, width=32)


class TinyEncoder(nn.Module):
    """One transformer encoder layer: linear projections, matmul attention, layer norms, GELU."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / (d // self.heads) ** 0.5, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.proj(y))
        return self.norm2(x + self.ff(x))


def tiny_encoder(seed: int = 0) -> TinyEncoder:
    torch.manual_seed(seed)
    return TinyEncoder().eval()


class NotAModule:
    pass


def not_a_module():
    return NotAModule()


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


def data_dependent() -> DataDependent:
    return DataDependent()


def two_inputs() -> nn.Module:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 4)
            self.b = nn.Linear(6, 4)

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.a(left)) + torch.relu(self.b(right))

    torch.manual_seed(0)
    return TwoInputs().eval()


class OutlierFFN(nn.Module):
    """A transformer feed-forward block whose hidden activations have one outlier channel, the
    pattern that makes BERT's FFN down-projection the layer int8 hurts most."""

    def __init__(self, dim: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.down(nn.functional.gelu(self.up(x)))))


def outlier_ffn(seed: int = 0) -> OutlierFFN:
    torch.manual_seed(seed)
    net = OutlierFFN()
    with torch.no_grad():
        net.up.weight[5] *= 60.0  # hidden channel 5 is ~60x larger than the rest
        net.up.bias[5] = 20.0
    return net.eval()


def broken_builder():
    return torch.nn.Embedding(10, 4, padding_idx=12)  # raises inside torch: the user's bug


class Branches(nn.Module):
    """Two conv branches concatenated (Inception/DenseNet style), then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)).mean((2, 3))


def branches() -> Branches:
    torch.manual_seed(0)
    return Branches().eval()


class DeepOutlierMLP(nn.Module):
    """Three layers; the middle one produces one output channel ~50x the others (as BERT's outlier
    hidden dimensions appear mid-network), so int8 error jumps there."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def deep_outlier_mlp(seed: int = 0) -> DeepOutlierMLP:
    torch.manual_seed(seed)
    net = DeepOutlierMLP()
    with torch.no_grad():
        net.b.weight[7] *= 50.0
        net.b.bias[7] = 30.0
    return net.eval()


class Overflows16(nn.Module):
    """Finite in float32, beyond float16's range (65504) inside: its float16 forms give inf."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x) * 1000.0
        return (h * h).sum(dim=-1, keepdim=True) * 1e-6


def overflows16(seed: int = 0) -> Overflows16:
    torch.manual_seed(seed)
    return Overflows16().eval()


class ClassTokenNet(nn.Module):
    """A ViT's front: conv patch embeddings, a learned class token concatenated before them, position
    embeddings, one linear layer, and the class token's row as the output."""

    def __init__(self, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)  # small next to the patches, as trained
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], dim=1) + self.pos
        return self.head(torch.relu(self.mix(tokens))[:, 0])


def class_token_net(seed: int = 0) -> ClassTokenNet:
    torch.manual_seed(seed)
    return ClassTokenNet().eval()


class DropoutHead(nn.Module):
    """A CNN classifier head as torchvision writes it (EfficientNet, MobileNetV3): pooled features through
    nn.Dropout(inplace=True) into the classifier; a few feature channels carry outliers."""

    def __init__(self, channels: int = 64, classes: int = 100) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight[:4] *= 40
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(channels, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def dropout_head(seed: int = 0) -> DropoutHead:
    torch.manual_seed(seed)
    return DropoutHead().eval()


class HeavyTailMLP(nn.Module):
    """Two linear layers; in the first, one weight in every 32 of each row is ~30x the rest (as a few
    large weights appear in trained layers), so an int4 group's 16 steps leave the small ones at zero
    while int8's 255 keep them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 16)
        with torch.no_grad():
            self.a.weight[:, ::32] *= 30.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def heavy_tail_mlp(seed: int = 0) -> HeavyTailMLP:
    torch.manual_seed(seed)
    return HeavyTailMLP().eval()


class KeywordSpotter(nn.Module):
    """A keyword-spotting network as small speech models are built: a 1-D convolution over 40 filterbank
    features, a two-layer recurrent layer (LSTM or GRU) over the frames, a classifier on the last one."""

    def __init__(self, cell: str = "lstm", hidden: int = 128) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(40, 48, 3, padding=1), nn.BatchNorm1d(48), nn.ReLU())
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(48, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 40, frames]
        out, _ = self.rnn(self.front(x).transpose(1, 2))
        return self.head(out[:, -1])


def spoken_features(count: int, frames: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic filterbank frames [count, 40, frames] of 8 'words': each a band of energy that sweeps
    up or down the 40 bands at its own rate from its own start, in noise; and the word labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 8, (count,), generator=g)
    t = torch.linspace(0, 1, frames)
    bands = torch.arange(40.0)[:, None]
    start = (labels.float() * 5 + 2)[:, None, None]
    rate = torch.where(labels % 2 == 0, 1.0, -1.0)[:, None, None] * (10 + 3 * (labels // 2).float())[:, None, None]
    centre = (start + rate * t[None, None, :]) % 40
    x = torch.exp(-0.5 * ((bands[None] - centre) / 2.0) ** 2) * 3.0
    return x + 0.4 * torch.randn(x.shape, generator=g), labels


def _trained(make, steps: int, seed: int) -> nn.Module:
    """The model `make()` builds, trained on `spoken_features` (seconds on a CPU); deterministic."""
    torch.manual_seed(seed)
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = spoken_features(512, seed=seed + 1)
    for step in range(steps):
        batch = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def trained_keyword_spotter(cell: str = "lstm", steps: int = 150, seed: int = 0) -> KeywordSpotter:
    return _trained(lambda: KeywordSpotter(cell), steps, seed)


def trained_lstm_spotter() -> KeywordSpotter:
    return trained_keyword_spotter("lstm")


def trained_gru_spotter() -> KeywordSpotter:
    return trained_keyword_spotter("gru")


class CellLoop(nn.Module):
    """A recurrent model written with cells in its own loop over the frames, as streaming speech models and
    decoders are: an LSTMCell and a GRUCell stacked, a classifier on the last state."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTMCell(40, hidden)
        self.gru = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 40, frames]
        h = c = g = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[2]):
            h, c = self.lstm(x[:, :, t], (h, c))
            g = self.gru(h, g)
        return self.head(g)


def trained_cell_loop(steps: int = 120, seed: int = 0) -> CellLoop:
    return _trained(CellLoop, steps, seed)


class TokenEncoder(nn.Module):
    """A Hugging Face encoder (randomly initialised from a small config) called with token ids and an
    attention mask, returning its last hidden states."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tiny_t5_encoder() -> TokenEncoder:
    """T5's encoder: relative position biases added to the attention scores, RMS norms, no biases."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=200, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
    return TokenEncoder(T5EncoderModel(config)).eval()


def tiny_gpt2() -> TokenEncoder:
    """GPT-2: its layers are Hugging Face `Conv1D`, an addmm with the weight stored (in, out)."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=200, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    return TokenEncoder(GPT2Model(config)).eval()


def token_batches(count: int, length: int = 16, vocab: int = 200, seed: int = 0) -> dict:
    """Random token ids with attention masks whose padding starts at a random position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (count, length), generator=g)
    mask = (torch.arange(length)[None] < torch.randint(length // 2, length + 1, (count, 1), generator=g)).long()
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


class MaskingSeparator(nn.Module):
    """A Conv-TasNet-like source separator on raw audio: a strided conv1d encoder, blocks of 1x1 conv, PReLU,
    GroupNorm and a dilated depthwise conv1d, a sigmoid mask per source, a ConvTranspose1d decoder."""

    def __init__(self, width: int = 32, sources: int = 2) -> None:
        super().__init__()
        self.width, self.sources = width, sources
        self.encoder = nn.Conv1d(1, width, 16, stride=8, bias=False)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv1d(width, 2 * width, 1), nn.PReLU(), nn.GroupNorm(1, 2 * width),
            nn.Conv1d(2 * width, 2 * width, 3, padding=d, dilation=d, groups=2 * width), nn.PReLU(2 * width),
            nn.Conv1d(2 * width, width, 1)) for d in (1, 2))
        self.mask = nn.Conv1d(width, sources * width, 1)
        self.decoder = nn.ConvTranspose1d(width, 1, 16, stride=8, bias=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # audio: [B, samples]
        w = torch.relu(self.encoder(audio.unsqueeze(1)))
        y = w
        for block in self.blocks:
            y = y + block(y)
        masks = torch.sigmoid(self.mask(y)).view(audio.shape[0], self.sources, self.width, -1)
        return self.decoder((w.unsqueeze(1) * masks).flatten(0, 1)).view(audio.shape[0], self.sources, -1)


def masking_separator() -> MaskingSeparator:
    torch.manual_seed(0)
    return MaskingSeparator().eval()


class WholeWindowPool(nn.Module):
    """A CNN that pools with one window larger than its feature map, as Hugging Face EfficientNet's
    `AvgPool2d(hidden_dim, ceil_mode=True)` does, then classifies."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.SiLU())
        self.pool = nn.AvgPool2d(64, ceil_mode=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(x)).flatten(1))


def whole_window_pool() -> WholeWindowPool:
    torch.manual_seed(0)
    model = WholeWindowPool()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics that are not the identity
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


class LogMelGRU(nn.Module):
    """An audio classifier that computes its own features, as torchaudio-style front-ends do: waveform ->
    `torch.stft` power spectrum -> mel filterbank -> log -> GRU -> mean over time -> linear."""

    def __init__(self, n_fft: int = 256, mels: int = 24, hidden: int = 32, classes: int = 8) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft))
        self.register_buffer("mel", torch.rand(n_fft // 2 + 1, mels) / n_fft)
        self.gru = nn.GRU(mels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # audio: [B, samples]
        power = torch.stft(audio, self.n_fft, self.n_fft // 2, window=self.window, return_complex=True).abs() ** 2
        features = torch.log(power.transpose(1, 2) @ self.mel + 1e-3)
        return self.head(self.gru(features)[0].mean(1))


def log_mel_gru() -> LogMelGRU:
    torch.manual_seed(0)
    return LogMelGRU().eval()


def tiny_mamba() -> TokenEncoder:
    """A Hugging Face Mamba (selective state space) language model body: its `x_proj` output is split
    into the time step (read by the int8 `dt_proj`) and the state matrices (float scan)."""
    from transformers import MambaConfig, MambaModel

    torch.manual_seed(0)
    config = MambaConfig(vocab_size=200, hidden_size=32, state_size=8, num_hidden_layers=1, expand=2,
                         conv_kernel=4, use_cache=False)
    return TokenEncoder(MambaModel(config)).eval()


def tiny_fnet() -> nn.Module:
    """Hugging Face FNet: token mixing by the real part of a 2-D Fourier transform (`fftn(x, dim=(1, 2))`)."""
    from transformers import FNetConfig, FNetModel

    class Ids(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fnet = FNetModel(FNetConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                                             max_position_embeddings=32, use_tpu_fourier_optimizations=False))

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.fnet(input_ids=input_ids).last_hidden_state

    return Ids().eval()


class OptionalInputs(nn.Module):
    """A forward with parameters that are not always inputs (a pitch tracker's `embed=False` flag, a
    `mask=None` tensor, a keyword-only `offset`): the data says which it gives."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, embed: bool = False, mask: torch.Tensor | None = None, *,
                offset: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if mask is not None:
            h = h * mask
        if embed:
            return h
        y = self.b(h)
        return y if offset is None else y + offset


def optional_inputs() -> OptionalInputs:
    torch.manual_seed(0)
    return OptionalInputs().eval()


def bfloat16_weights() -> OptionalInputs:
    """A checkpoint as hubs ship many: its weights in bfloat16."""
    return optional_inputs().to(torch.bfloat16)


def float64_weights() -> OptionalInputs:
    return optional_inputs().double()


class Returns(nn.Module):
    """A model whose forward returns `value` (a string, None, numbers) after computing on its input."""

    def __init__(self, value) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.value = value

    def forward(self, x: torch.Tensor):
        self.conv(x)
        return self.value


def returns_string() -> Returns:
    return Returns("speech")


def returns_none() -> Returns:
    return Returns(None)


def returns_numbers() -> Returns:
    return Returns({"pitch": 440.0, "voiced": True})


def megabytes_of_weights(megabytes: float = 1.0) -> nn.Module:
    """A conv net with about `megabytes` of float weights (one wide 1x1 layer)."""
    torch.manual_seed(0)
    width = int((megabytes * 1e6 / 4) ** 0.5)
    return nn.Sequential(nn.Conv2d(3, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def three_megabytes_of_weights() -> nn.Module:
    return megabytes_of_weights(3.0)


class SpeakerEncoder(nn.Module):
    """A speaker-verification encoder as they are built (GE2E, d-vector): a 3-layer LSTM over 40 mel
    features per frame, a linear layer on the last hidden state, L2-normalised."""

    def __init__(self, hidden: int = 256, embedding: int = 256, layers: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, hidden, num_layers=layers, batch_first=True)
        self.linear = nn.Linear(hidden, embedding)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:  # mels: [B, frames, 40]
        _, (hidden, _) = self.lstm(mels)
        return nn.functional.normalize(torch.relu(self.linear(hidden[-1])), dim=1)


def speaker_encoder(seed: int = 0) -> SpeakerEncoder:
    torch.manual_seed(seed)
    return SpeakerEncoder().eval()


class NearThreshold(nn.Module):
    """A detector whose speech probability sits near 0.5 for most inputs while one rare feature spans a
    wide range (as a loud frame does): per-tensor int8 steps are coarse next to the margin that decides,
    so int8 flips decisions while the SQNR of the probabilities stays high. Outputs: the probability
    (sigmoid) and a class distribution (softmax), both behind views."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(16, 1)
        self.classes = nn.Linear(16, 4)
        with torch.no_grad():
            self.score.weight.fill_(0.01)
            self.score.weight[0, 0] = 1.0
            self.score.bias.zero_()

    def forward(self, x: torch.Tensor):
        return torch.sigmoid(self.score(x)).view(-1), torch.softmax(self.classes(x), dim=-1).unsqueeze(1)


def near_threshold() -> NearThreshold:
    torch.manual_seed(0)
    return NearThreshold().eval()


class SpectralDetector(nn.Module):
    """A voice-activity detector's front end as streaming VADs build it: a conv1d with fixed DFT kernels
    (cosine and sine rows, no bias) over the raw audio, the magnitude sqrt(re**2 + im**2) (positive, wide
    range), then convolutions with biases and ReLU, a pooled linear layer and a sigmoid probability."""

    def __init__(self, window: int = 64, hop: int = 32, channels: int = 16) -> None:
        super().__init__()
        bins = window // 2 + 1
        t = torch.arange(window, dtype=torch.float32)
        k = torch.arange(bins, dtype=torch.float32)[:, None]
        basis = torch.cat([torch.cos(2 * torch.pi * k * t / window), -torch.sin(2 * torch.pi * k * t / window)])
        self.bins = bins
        self.dft = nn.Conv1d(1, 2 * bins, window, stride=hop, bias=False)
        self.dft.weight.data.copy_(basis[:, None, :] * torch.hann_window(window, periodic=False))
        self.dft.weight.requires_grad_(False)
        self.conv1 = nn.Conv1d(bins, channels, 3)
        self.conv2 = nn.Conv1d(channels, channels, 3)
        self.score = nn.Linear(channels, 1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # audio: [B, 1, samples]
        spectrum = self.dft(audio)
        re, im = spectrum[:, :self.bins], spectrum[:, self.bins:]
        magnitude = torch.sqrt(re * re + im * im + 1e-6)
        h = torch.relu(self.conv2(torch.relu(self.conv1(magnitude))))
        return torch.sigmoid(self.score(h.mean(dim=2)))


def spectral_detector() -> SpectralDetector:
    torch.manual_seed(0)
    return SpectralDetector().eval()


def voiced_audio(count: int, samples: int = 1024, seed: int = 0) -> torch.Tensor:
    """[count, 1, samples] audio chunks at 16 kHz: half voiced (a 90-250 Hz fundamental with decaying
    harmonics, as a voice's are), half quiet noise; amplitudes spread over 30 dB."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000.0
    chunks = []
    for i in range(count):
        loud = 10 ** (-1.5 * float(torch.rand(1, generator=g)))
        chunk = torch.randn(samples, generator=g) * 0.01 * loud
        if i % 2 == 0:
            f0 = 90 + 160 * float(torch.rand(1, generator=g))
            phases = torch.rand(11, generator=g) * 6.3
            chunk = chunk + loud * sum(torch.sin(2 * torch.pi * f0 * h * t + phases[h - 1]) / h for h in range(1, 12))
        chunks.append(chunk)
    return torch.stack(chunks)[:, None, :]


class StreamingGRU(nn.Module):
    """A streaming recurrent model as speech enhancers and voice-activity detectors ship it: a chunk of
    frames [B, T, 16] and the GRU's state [layers, B, hidden] (batch axis second) in, a score for the
    chunk and the new state out."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(16, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.gru(x, h)
        return torch.sigmoid(self.head(out[:, -1])), h


def streaming_gru() -> StreamingGRU:
    torch.manual_seed(0)
    return StreamingGRU().eval()


class LongSequenceTagger(nn.Module):
    """Frame features [B, frames, 12] through an LSTM and a bidirectional GRU, scored per frame and pooled:
    both recurrent layers run as loops at 32 frames and more (edgeship/export/loops.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(12, 24, batch_first=True)
        self.gru = nn.GRU(24, 16, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 4)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(frames)
        out, _ = self.gru(out)
        return self.head(out).mean(dim=1)


def long_sequence_tagger() -> LongSequenceTagger:
    torch.manual_seed(0)
    return LongSequenceTagger().eval()


def minilm_samples():
    """all-MiniLM-L6-v2 (from its offline package) and real sentences: 64 to calibrate, 32 held out."""
    import sys
    from pathlib import Path

    import numpy as np

    from edgeship.calibration.samples import Samples

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "examples"))
    import minilm

    names = ("input_ids", "attention_mask")
    with np.load(root / "calibration_data/sentences-minilm.npz") as npz:
        arrays = [npz[k] for k in names]
    return (minilm.build().eval(), Samples(names, tuple(a[:64] for a in arrays), "64 sentences"),
            Samples(names, tuple(a[192:224] for a in arrays), "32 held-out sentences"))
