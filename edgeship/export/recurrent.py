"""Recurrent layers (nn.LSTM, nn.GRU, nn.RNN) rewritten as the linear layers and elementwise ops they
compute, unrolled over the (static) sequence length, before torch.export captures the model.

Captured as they are, the three runtimes get three different things: ONNX keeps one LSTM/GRU op that
no int8 quantizer reaches, ExecuTorch keeps `aten.lstm` outside XNNPACK (or splits a GRU into hundreds
of partitions that take minutes to lower), LiteRT unrolls it in float. Rewritten, the gates are one
`nn.Linear` on the layer input (one call over the whole sequence) plus one on the hidden
state (one call per step, its weight shared by the steps), so the int8 quantizer gives the gates int8
weights and int8 matmuls in all three runtimes, while the gate nonlinearities and the cell state stay
in float. Every op used (linear, add, mul, sub, sigmoid, tanh, slice, view, cat) is one XNNPACK
delegates, so the recurrent layer lowers into the delegate whole.

The cells (nn.LSTMCell, nn.GRUCell, nn.RNNCell), which a model calls in its own loop over the steps, are
captured as `aten.lstm_cell` / `gru_cell` / `rnn_tanh_cell` and stayed float in every runtime for the
same reasons; each becomes the same two linear layers, called once per call of the cell.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)  # one step, called by the model's own loop
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# From this many steps a layer runs them as one loop (edgeship/export/loops.py): its graph, quantization and
# lowering cost the same at any length. Shorter sequences are unrolled, each step's ranges its own.
LOOP_STEPS = 32


class _Gates(nn.Module):
    """One recurrent cell's weights as two linear layers: `inp` maps the input to every gate (both biases
    where PyTorch adds them together), `hid` maps the hidden state to every gate. An LSTM's gates are
    reordered i, f, o, g so one sigmoid covers three of them."""

    def __init__(self, mode: str, size: int, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None,
                 b_hh: torch.Tensor | None, w_hr: torch.Tensor | None = None) -> None:
        super().__init__()
        self.mode = mode
        gates = GATES[mode]
        zeros = torch.zeros(gates * size, dtype=w_ih.dtype)
        b_ih = b_ih if b_ih is not None else zeros
        b_hh = b_hh if b_hh is not None else zeros
        if self.mode == "LSTM":  # PyTorch's i, f, g, o -> i, f, o, g
            order = torch.cat([torch.arange(k * size, (k + 1) * size) for k in (0, 1, 3, 2)])
            w_ih, w_hh, b_ih, b_hh = w_ih[order], w_hh[order], b_ih[order], b_hh[order]
        if self.mode == "GRU":  # the new gate's hidden bias sits inside r * (W_hn h + b_hn)
            self.inp = _linear(w_ih, torch.cat([b_ih[:2 * size] + b_hh[:2 * size], b_ih[2 * size:]]))
            self.hid = _linear(w_hh, torch.cat([torch.zeros(2 * size, dtype=w_hh.dtype), b_hh[2 * size:]]))
        else:
            self.inp = _linear(w_ih, b_ih + b_hh)
            self.hid = _linear(w_hh, None)
        self.size = size
        self.proj = _linear(w_hr, None) if w_hr is not None else None

    def _step(self, x, h, c):
        """x: the input's gates (`inp`'s output); h, c: the state, or None for zeros."""
        size = self.size
        if self.mode == "LSTM":
            pre = x if h is None else x + self.hid(h)
            ifo, g = torch.sigmoid(pre[..., :3 * size]), torch.tanh(pre[..., 3 * size:])
            i, f, o = ifo[..., :size], ifo[..., size:2 * size], ifo[..., 2 * size:]
            c = i * g if c is None else f * c + i * g
            h = o * torch.tanh(c)
            return (self.proj(h) if self.proj is not None else h), c
        if self.mode == "GRU":
            hidden = self.hid.bias if h is None else self.hid(h)  # h = 0: the hidden side is its bias
            rz = torch.sigmoid(x[..., :2 * size] if h is None else x[..., :2 * size] + hidden[..., :2 * size])
            r, z = rz[..., :size], rz[..., size:]
            n = torch.tanh(x[..., 2 * size:] + r * hidden[..., 2 * size:])
            return (n - z * n if h is None else n + z * (h - n)), None
        pre = x if h is None else x + self.hid(h)
        return (torch.tanh(pre) if self.mode == "RNN_TANH" else torch.relu(pre)), None


class _Direction(_Gates):
    """One direction of one layer of an nn.LSTM / GRU / RNN: `inp` is called once over the whole
    sequence, `hid` once per step (one weight, shared by the steps). `loops`: from LOOP_STEPS steps on, the
    steps are one loop instead of unrolled."""

    def __init__(self, *gates, loops: bool = True) -> None:
        super().__init__(*gates)
        self.loops = loops

    @classmethod
    def of(cls, rnn: nn.Module, layer: int, suffix: str, loops: bool = True) -> _Direction:
        def weight(name: str) -> torch.Tensor:
            return getattr(rnn, f"{name}_l{layer}{suffix}").detach()

        return cls(rnn.mode, rnn.hidden_size, weight("weight_ih"), weight("weight_hh"),
                   weight("bias_ih") if rnn.bias else None, weight("bias_hh") if rnn.bias else None,
                   weight("weight_hr") if getattr(rnn, "proj_size", 0) else None, loops=loops)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None, reverse: bool):
        """x: [B, T, in]; h, c: [B, 1, H] or None (zeros). Returns the outputs [B, T, H] and the last h, c."""
        steps = x.shape[1]
        projected = self.inp(x)  # [B, T, gates * H]: one matmul over the whole sequence
        if self.loops and steps >= LOOP_STEPS:
            return self._loop(projected, h, c, reverse)
        outputs: list[torch.Tensor] = [None] * steps  # type: ignore[list-item]
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            h, c = self._step(projected[:, t:t + 1], h, c)
            outputs[t] = h
        return torch.cat(outputs, dim=1) if steps > 1 else outputs[0], h, c

    def _loop(self, projected: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None, reverse: bool):
        """The steps as one loop (`torch.ops.higher_order.scan`, edgeship/export/loops.py), from zeros
        where the state is not given."""
        from torch._higher_order_ops.scan import scan

        batch = projected.shape[0]
        width = self.proj.out_features if self.proj is not None else self.size
        lstm = self.mode == "LSTM"
        # the steps work on [B, H]: a linear layer on a 2-D input is one op (XNNPACK's int8 pattern), not views
        # around a matmul
        h = h.reshape(batch, width) if h is not None else projected.new_zeros(batch, width)
        c = (c.reshape(batch, self.size) if c is not None else projected.new_zeros(batch, self.size)) if lstm else None

        def step(state, x):  # x: [B, gates * H], one step of the projected input
            h, c = self._step(x, state[0], state[1] if lstm else None)
            return ((h, c) if lstm else (h,)), h.clone()

        state, outputs = scan(step, (h, c) if lstm else (h,), projected, dim=1, reverse=reverse)
        return outputs, state[0].unsqueeze(1), (state[1].unsqueeze(1) if lstm else None)


class UnrolledCell(_Gates):
    """Drop-in replacement for an nn.LSTMCell / nn.GRUCell / nn.RNNCell in eval mode: same arguments, same
    outputs (`h'` or `(h', c')`), computed with `inp` on the input and `hid` on the state. A model that
    calls the cell in a loop calls these two linear layers once per step, each with one weight."""

    def __init__(self, cell: nn.Module) -> None:
        mode = {nn.LSTMCell: "LSTM", nn.GRUCell: "GRU"}.get(type(cell)) or \
            ("RNN_TANH" if cell.nonlinearity == "tanh" else "RNN_RELU")
        bias = (cell.bias_ih.detach(), cell.bias_hh.detach()) if cell.bias else (None, None)
        super().__init__(mode, cell.hidden_size, cell.weight_ih.detach(), cell.weight_hh.detach(), *bias)

    def forward(self, x: torch.Tensor, hx=None):
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
            hx = tuple(s.unsqueeze(0) for s in hx) if isinstance(hx, tuple) else (
                hx.unsqueeze(0) if hx is not None else None)
        h, c = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
        h, c = self._step(self.inp(x), h, c)
        if unbatched:
            h, c = h.squeeze(0), (c.squeeze(0) if c is not None else None)
        return (h, c) if self.mode == "LSTM" else h


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


class Unrolled(nn.Module):
    """Drop-in replacement for an nn.LSTM / nn.GRU / nn.RNN in eval mode: same arguments, same outputs
    (`output, h_n` or `output, (h_n, c_n)`), computed step by step with linear layers."""

    def __init__(self, rnn: nn.Module, loops: bool = True) -> None:
        super().__init__()
        self.mode = rnn.mode
        self.layers = rnn.num_layers
        self.directions = 2 if rnn.bidirectional else 1
        self.batch_first = rnn.batch_first
        self.hidden = rnn.proj_size if getattr(rnn, "proj_size", 0) else rnn.hidden_size
        self.cell = rnn.hidden_size
        self.original = rnn  # for inputs it was not unrolled for (a PackedSequence)
        self.cells = nn.ModuleList(
            _Direction.of(rnn, layer, "_reverse" if d else "", loops) for layer in range(self.layers)
            for d in range(self.directions))

    def forward(self, x, hx=None):
        if not isinstance(x, torch.Tensor):
            return self.original(x, hx)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1 if not self.batch_first else 0)
            hx = tuple(s.unsqueeze(1) for s in hx) if isinstance(hx, tuple) else (
                hx.unsqueeze(1) if hx is not None else None)
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch = x.shape[0]
        h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
        last_h, last_c = [], []
        for layer in range(self.layers):
            outs = []
            for d in range(self.directions):
                k = layer * self.directions + d
                h = h0[k].reshape(batch, 1, self.hidden) if h0 is not None else None
                c = c0[k].reshape(batch, 1, self.cell) if c0 is not None else None
                out, h, c = self.cells[k](x, h, c, reverse=d == 1)
                outs.append(out)
                last_h.append(self._state(h, batch, self.hidden))
                if self.mode == "LSTM":
                    last_c.append(self._state(c, batch, self.cell))
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        output = x if self.batch_first else x.transpose(0, 1)
        h_n = torch.cat(last_h, dim=0)
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
        if self.mode != "LSTM":
            return output, h_n
        c_n = torch.cat(last_c, dim=0)
        return output, (h_n, c_n.squeeze(1) if unbatched else c_n)

    def _state(self, s: torch.Tensor | None, batch: int, size: int) -> torch.Tensor:
        """[B, 1, H] -> [1, B, H] (the same memory order); zeros when the sequence left it unset."""
        if s is None:
            return torch.zeros(1, batch, size)
        return s.reshape(1, batch, size)


def unroll_recurrent(model: nn.Module, args: tuple, loops: bool = True) -> tuple[nn.Module, list[str]]:
    """A copy of `model` with every nn.LSTM / nn.GRU / nn.RNN replaced by `Unrolled` and every
    nn.LSTMCell / nn.GRUCell / nn.RNNCell by `UnrolledCell` (names returned), or `model` itself when it
    has none. `loops`: long sequences as loops (LOOP_STEPS), else every step unrolled. The copy's outputs
    are checked against the model's on `args`;
    where they differ, the model is kept as it is and a warning says so."""
    names = [name for name, m in model.named_modules() if type(m) in RECURRENT + CELLS]
    if not names:
        return model, []
    rewritten = copy.deepcopy(model)
    for name in names:
        layer = rewritten.get_submodule(name)
        new = Unrolled(layer, loops) if type(layer) in RECURRENT else UnrolledCell(layer)
        rewritten.set_submodule(name, new.eval())
    with torch.no_grad():
        want, got = model(*args), rewritten(*args)
    want = [t for t in torch.utils._pytree.tree_leaves(want) if isinstance(t, torch.Tensor)]
    got = [t for t in torch.utils._pytree.tree_leaves(got) if isinstance(t, torch.Tensor)]
    worst = max(((a.float() - b.float()).abs().max() / (1 + a.float().abs().max())).item()
                for a, b in zip(want, got)) if len(want) == len(got) else float("inf")
    if worst > 1e-4:
        log.warning("recurrent layers %s left as they are: their unrolled form differs from them by %.2g on "
                    "the example inputs; they will not be quantized", ", ".join(names), worst)
        return model, []
    log.info("recurrent layers unrolled into linear layers (int8 weights and matmuls): %s", ", ".join(names))
    return rewritten, names
