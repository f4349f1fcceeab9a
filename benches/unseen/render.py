"""Renders camera footage in a visual style the defect model never trained on.

This renderer shares no code, textures or defect drawings with the project's own scene
generator (models/src/synth): surfaces are procedural materials drawn here (brushed
steel, painted plate, galvanised sheet, concrete, rubber belting, cast iron), defects
are drawn another way (random-walk cracks with branches, rust grown from a noise field,
oil stains, pitting, bolts that fall out), and the footage carries what real cameras
see: passing shadows, lighting steps, flicker, camera shake, people and vehicles
crossing, steam, lens dirt, sensor noise, blur and H.264 artefacts.

It is the evaluation set of `defectflow eval --footage`: never trained on and never
used to choose thresholds.

    python render.py --out DIR [--seed N] [--defect-clips 8] [--clean-clips 24]
                     [--defect-seconds 90] [--clean-seconds 300] [--fps 10] [--scene S]

Writes DIR/clips/<camera>.mp4 and DIR/footage.json (the ground truth).
"""

import argparse
import json
import math
import os
import subprocess

import numpy as np

W, H = 640, 360
YY, XX = np.mgrid[0:H, 0:W].astype(np.float32)


# ---------------------------------------------------------------- noise helpers
def value_noise(rng, h, w, cell):
    """Smooth noise in [0, 1]: a coarse random grid upsampled bicubically-ish."""
    gh, gw = h // cell + 3, w // cell + 3
    grid = rng.random((gh, gw)).astype(np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = ys - y0, xs - x0
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    top = a + (b - a) * fx[None, :]
    bottom = c + (d - c) * fx[None, :]
    return top + (bottom - top) * fy[:, None]


def fractal(rng, h, w, base, octaves=4):
    total, amp, norm = np.zeros((h, w), np.float32), 1.0, 0.0
    cell = base
    for _ in range(octaves):
        total += amp * value_noise(rng, h, w, max(cell, 1))
        norm += amp
        amp *= 0.5
        cell = max(cell // 2, 1)
    return total / norm


def blur(img, k):
    """Box blur of size k along both axes (k odd), channels last or 2-D."""
    if k <= 1:
        return img
    pad = k // 2
    out = img.astype(np.float32)
    for axis in (0, 1):
        c = np.cumsum(np.pad(out, [(pad + 1, pad) if a == axis else (0, 0) for a in range(out.ndim)], mode="edge"), axis=axis)
        hi = np.take(c, np.arange(k, k + out.shape[axis]), axis=axis)
        lo = np.take(c, np.arange(0, out.shape[axis]), axis=axis)
        out = (hi - lo) / k
    return out


# ---------------------------------------------------------------- surfaces
def surface(rng, style):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if style == "brushed_steel":
        streak = blur(rng.random((H, W)).astype(np.float32), 1)
        streak = np.cumsum(streak - 0.5, axis=1)
        streak = (streak - streak.min()) / (np.ptp(streak) + 1e-6)
        base = 0.55 + 0.15 * streak + 0.08 * fractal(rng, H, W, 64)
        rgb = np.stack([base * 0.92, base * 0.95, base], -1)
    elif style == "painted_plate":
        hue = rng.choice([[0.2, 0.45, 0.25], [0.15, 0.3, 0.55], [0.7, 0.55, 0.1], [0.45, 0.45, 0.45]])
        tone = 0.85 + 0.15 * fractal(rng, H, W, 96)
        rgb = np.array(hue, np.float32)[None, None, :] * tone[..., None]
        speck = rng.random((H, W)) < 0.004
        rgb[speck] *= 0.6
    elif style == "galvanised":
        pts = rng.random((60, 2)) * [H, W]
        shade = rng.random(60).astype(np.float32)
        d = np.full((H, W), 1e9, np.float32)
        idx = np.zeros((H, W), np.int32)
        for i, (py, px) in enumerate(pts):
            dist = (yy - py) ** 2 + (xx - px) ** 2
            closer = dist < d
            d[closer] = dist[closer]
            idx[closer] = i
        base = 0.6 + 0.18 * shade[idx] + 0.05 * fractal(rng, H, W, 32)
        rgb = np.stack([base * 0.97, base, base * 1.02], -1)
    elif style == "concrete":
        base = 0.5 + 0.25 * fractal(rng, H, W, 48, 5)
        pores = rng.random((H, W)) < 0.01
        base[pores] -= 0.25
        rgb = np.stack([base, base * 0.98, base * 0.93], -1)
    elif style == "rubber_belt":
        ribs = 0.5 + 0.5 * np.sin(xx / rng.uniform(5, 9))
        base = 0.12 + 0.05 * ribs + 0.04 * fractal(rng, H, W, 24)
        rgb = np.stack([base, base, base * 1.05], -1)
    else:  # cast_iron
        base = 0.3 + 0.12 * fractal(rng, H, W, 16, 5) + 0.06 * rng.random((H, W))
        rgb = np.stack([base * 1.02, base, base * 0.96], -1)
    return np.clip(rgb, 0, 1).astype(np.float32)


def furniture(rng, img):
    """Seams, a flange of bolts, a pipe: the fixed things on the asset. Returns bolts."""
    out = img.copy()
    for _ in range(rng.integers(1, 3)):
        if rng.random() < 0.5:
            y = int(rng.integers(30, H - 30))
            out[y - 1:y + 2] *= 0.55
            out[y + 2:y + 4] *= 1.12
        else:
            x = int(rng.integers(30, W - 30))
            out[:, x - 1:x + 2] *= 0.55
    if rng.random() < 0.6:
        y0 = int(rng.integers(40, H - 100))
        h = int(rng.integers(40, 70))
        shade = np.linspace(0.5, 1.25, h, dtype=np.float32)
        shade = np.minimum(shade, shade[::-1] + 0.4)
        out[y0:y0 + h] = out[y0:y0 + h] * 0.4 + 0.35 * shade[:, None, None]
    bolts = []
    n = int(rng.integers(4, 9))
    cy, cx, r = rng.uniform(120, 240), rng.uniform(180, 460), rng.uniform(70, 110)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for i in range(n):
        a = 2 * math.pi * i / n + rng.uniform(-0.1, 0.1)
        by, bx = cy + r * 0.6 * math.sin(a), cx + r * math.cos(a)
        if not (15 < by < H - 15 and 15 < bx < W - 15):
            continue
        rad = rng.uniform(6, 9)
        d = np.sqrt((yy - by) ** 2 + (xx - bx) ** 2)
        head = d < rad
        light = np.clip(1.0 - ((yy - by + rad * 0.3) ** 2 + (xx - bx + rad * 0.3) ** 2) / (rad * rad), 0, 1)
        out[head] = (0.35 + 0.45 * light[head])[:, None] * np.array([0.9, 0.9, 0.95], np.float32)
        ring = (d >= rad) & (d < rad + 2)
        out[ring] *= 0.5
        bolts.append((by, bx, rad))
    return np.clip(out, 0, 1), bolts


# ---------------------------------------------------------------- defects
class Crack:
    klass = "crack"

    def __init__(self, rng, onset, region):
        y, x = region
        self.onset = onset
        self.grow_s = rng.uniform(20, 50)
        pts = [(y, x)]
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(40, 80))):
            angle += rng.normal(0, 0.35)
            step = rng.uniform(1.5, 3.0)
            y, x = y + step * math.sin(angle), x + step * math.cos(angle)
            pts.append((y, x))
        branches = []
        for _ in range(int(rng.integers(0, 3))):
            k = int(rng.integers(5, len(pts) - 5))
            by, bx = pts[k]
            a = angle + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
            b = [(by, bx)]
            for _ in range(int(rng.integers(8, 20))):
                a += rng.normal(0, 0.3)
                by, bx = by + 2 * math.sin(a), bx + 2 * math.cos(a)
                b.append((by, bx))
            branches.append((k, b))
        self.pts, self.branches = pts, branches
        self.width = rng.uniform(1.0, 2.2)

    def share(self, t):
        return float(np.clip((t - self.onset) / self.grow_s, 0, 1)) * 0.85 + (0.15 if t >= self.onset else 0)

    def draw(self, img, t):
        if t < self.onset:
            return img
        n = max(2, int(len(self.pts) * self.share(t)))
        if getattr(self, "cached", (None,))[0] != n:
            self.cached = (n, self.shade(n))
        return img * self.cached[1]

    def shade(self, n):
        paths = [self.pts[:n]] + [b for k, b in self.branches if k < n]
        mask = np.zeros((H, W), np.float32)
        for path in paths:
            for (y0, x0), (y1, x1) in zip(path, path[1:]):
                for s in np.linspace(0, 1, 4):
                    y, x = y0 + (y1 - y0) * s, x0 + (x1 - x0) * s
                    r = self.width
                    ys, xs = slice(max(int(y - r - 1), 0), min(int(y + r + 2), H)), slice(max(int(x - r - 1), 0), min(int(x + r + 2), W))
                    gy, gx = np.mgrid[ys, xs]
                    d = np.sqrt((gy - y) ** 2 + (gx - x) ** 2)
                    mask[ys, xs] = np.maximum(mask[ys, xs], np.clip(r + 0.5 - d, 0, 1))
        halo = blur(mask, 5)
        return (1 - 0.8 * mask[..., None]) * (1 - 0.15 * halo[..., None])

    def box(self, t):
        n = max(2, int(len(self.pts) * self.share(t)))
        allpts = self.pts[:n] + [p for k, b in self.branches if k < n for p in b]
        ys, xs = [p[0] for p in allpts], [p[1] for p in allpts]
        return clip_box(min(xs) - 3, min(ys) - 3, max(xs) + 3, max(ys) + 3)


class Blob:
    """Rust, an oil stain or pitting: a region grown from a noise field."""

    def __init__(self, rng, onset, region, klass):
        self.klass = klass
        self.onset = onset
        self.cy, self.cx = region
        self.grow_s = rng.uniform(25, 60)
        self.radius = rng.uniform(22, 45)
        self.field = fractal(rng, H, W, 12, 4)
        self.texture = fractal(rng, H, W, 4, 3)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        self.dist = np.sqrt((yy - self.cy) ** 2 + ((xx - self.cx) * 0.8) ** 2)

    def radius_at(self, t):
        if t < self.onset:
            return 0.0
        return self.radius * (0.3 + 0.7 * float(np.clip((t - self.onset) / self.grow_s, 0, 1)))

    def mask(self, t):
        r = self.radius_at(t)
        if r <= 0:
            return None
        return np.clip((r - self.dist + 12 * (self.field - 0.5)) / 4.0, 0, 1)

    def draw(self, img, t):
        m = self.mask(t)
        if m is None:
            return img
        if self.klass == "corrosion":
            colour = np.stack([0.55 + 0.2 * self.texture, 0.25 + 0.12 * self.texture, 0.08 + 0.05 * self.texture], -1)
            return img * (1 - m[..., None]) + colour * m[..., None]
        if self.klass == "contamination":
            sheen = 0.5 + 0.5 * self.texture
            return img * (1 - 0.65 * m[..., None]) + 0.04 * sheen[..., None] * m[..., None]
        pits = (self.texture > 0.62).astype(np.float32) * m
        return img * (1 - 0.6 * pits[..., None])

    def box(self, t):
        m = self.mask(t)
        if m is None:
            return None
        ys, xs = np.nonzero(m > 0.3)
        if len(ys) == 0:
            return None
        return clip_box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


class MissingBolt:
    klass = "missing_component"

    def __init__(self, onset, bolt):
        self.onset = onset
        self.by, self.bx, self.rad = bolt

    def draw(self, img, t):
        if t < self.onset:
            return img
        d = np.sqrt((YY - self.by) ** 2 + (XX - self.bx) ** 2)
        out = img.copy()
        hole = d < self.rad * 0.55
        out[hole] = 0.05
        ring = (d >= self.rad * 0.55) & (d < self.rad + 2)
        out[ring] = out[ring] * 0.55 + 0.3
        return out

    def box(self, t):
        r = self.rad + 3
        return clip_box(self.bx - r, self.by - r, self.bx + r, self.by + r)


def clip_box(x0, y0, x1, y1):
    x0, y0 = max(0.0, float(x0)), max(0.0, float(y0))
    x1, y1 = min(float(W), float(x1)), min(float(H), float(y1))
    return [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)]


# ---------------------------------------------------------------- nuisances
class Nuisances:
    """Things in front of the asset that are not defects, each over an interval."""

    def __init__(self, rng, seconds):
        self.events = []
        self.dirt = None
        if rng.random() < 0.5:  # lens dirt from the start: part of this camera's view
            yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
            cy, cx, r = rng.uniform(40, H - 40), rng.uniform(40, W - 40), rng.uniform(15, 35)
            self.dirt = np.clip(1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r), 0, 1) * 0.35
        # After the first 12 s: a camera is commissioned on its first seconds.
        t = rng.uniform(12, 25)
        kinds = ["shadow", "light_step", "shake", "person", "vehicle", "steam", "flicker"]
        while t < seconds - 5:
            kind = str(rng.choice(kinds))
            length = {"shadow": rng.uniform(4, 10), "light_step": rng.uniform(20, 60), "shake": rng.uniform(1, 4),
                      "person": rng.uniform(2.5, 6), "vehicle": rng.uniform(2, 5), "steam": rng.uniform(6, 15),
                      "flicker": rng.uniform(2, 6)}[kind]
            self.events.append({"kind": kind, "start_s": round(t, 2), "end_s": round(min(t + length, seconds), 2),
                                "param": float(rng.uniform(0, 1)), "seed": int(rng.integers(1 << 30))})
            t += length + rng.uniform(8, 30)
        self.cache = {}

    def offset(self, t):
        for e in self.events:
            if e["kind"] == "shake" and e["start_s"] <= t < e["end_s"]:
                amp = 2 + 4 * e["param"]
                return int(round(amp * math.sin(t * 37.0))), int(round(amp * math.cos(t * 23.0)))
        return 0, 0

    def apply(self, img, t):
        out = img
        for e in self.events:
            if not e["start_s"] <= t < e["end_s"]:
                continue
            k = (t - e["start_s"]) / max(e["end_s"] - e["start_s"], 1e-3)
            kind = e["kind"]
            if kind == "light_step":
                out = out * (0.65 + 0.7 * e["param"])
            elif kind == "flicker":
                out = out * (0.85 + 0.15 * math.sin(t * 60.0))
            elif kind == "shadow":
                xx = np.arange(W, dtype=np.float32)
                edge = -200 + k * (W + 400)
                band = np.clip((xx - edge) / 30.0, 0, 1) * np.clip((edge + 220 - xx) / 30.0, 0, 1)
                out = out * (1 - 0.45 * band[None, :, None])
            elif kind in ("person", "vehicle"):
                out = crossing(out, k, kind, e["param"])
            elif kind == "steam":
                key = ("steam", e["seed"])
                if key not in self.cache:
                    self.cache[key] = fractal(np.random.default_rng(e["seed"]), H * 2, W, 40, 4)
                field = self.cache[key]
                shift = int(k * H)
                plume = field[H - shift // 2: 2 * H - shift // 2] if shift // 2 < H else field[:H]
                xx = np.arange(W, dtype=np.float32)
                cx = 120 + 400 * e["param"]
                column = np.exp(-((xx - cx) / 110.0) ** 2)
                alpha = np.clip(plume * 1.3 - 0.35, 0, 0.8) * column[None, :] * math.sin(math.pi * k)
                out = out * (1 - alpha[..., None]) + 0.9 * alpha[..., None]
        if self.dirt is not None:
            out = out * (1 - self.dirt[..., None])
        return out


def crossing(img, k, kind, param):
    out = img.copy()
    yy, xx = YY, XX
    if kind == "person":
        cx = -60 + k * (W + 120)
        body = (np.abs(xx - cx) < 28) & (yy > 90) & (yy < 330)
        head = (yy - 70) ** 2 + (xx - cx) ** 2 < 22 ** 2
        colour = np.array([0.9, 0.45, 0.1] if param > 0.5 else [0.15, 0.2, 0.35], np.float32)
        out[body] = colour * 0.8
        out[head] = np.array([0.75, 0.6, 0.5], np.float32)
    else:
        cx = -220 + k * (W + 440)
        body = (np.abs(xx - cx) < 160) & (yy > 150) & (yy < 320)
        out[body] = np.array([0.85, 0.7, 0.1], np.float32) * (0.7 + 0.3 * (yy[body] / H))[:, None]
        for wx in (cx - 100, cx + 100):
            wheel = (yy - 320) ** 2 + (xx - wx) ** 2 < 30 ** 2
            out[wheel] = 0.05
    return out


# ---------------------------------------------------------------- clips
STYLES = ["brushed_steel", "painted_plate", "galvanised", "concrete", "rubber_belt", "cast_iron"]


def render_clip(path, rng, seconds, fps, defects_wanted, onset=None, scene=None, chroma="I420"):
    """One clip. With `scene` (a seed) the view is that camera's: the same surface,
    fittings, gain and tint in every clip, the nuisances, defects and noise the clip's own."""
    view = rng if scene is None else np.random.default_rng(scene)
    style = str(view.choice(STYLES))
    base, bolts = furniture(view, surface(view, style))
    nuisances = Nuisances(rng, seconds)
    gain = view.uniform(0.8, 1.15)
    tint = view.uniform(0.9, 1.1, 3).astype(np.float32)
    defects = []
    for klass in defects_wanted:
        # After the camera's commissioning (30 s by default), with time left to find it.
        onset = float(rng.uniform(40, max(41, seconds - 60))) if onset is None else onset
        region = (rng.uniform(60, H - 60), rng.uniform(80, W - 80))
        if klass == "crack":
            defects.append(Crack(rng, onset, region))
        elif klass == "missing_component" and bolts:
            defects.append(MissingBolt(onset, bolts[int(rng.integers(len(bolts)))]))
        else:
            defects.append(Blob(rng, onset, region, klass if klass != "missing_component" else "corrosion"))
    encoder = subprocess.Popen(
        ["gst-launch-1.0", "-q", "fdsrc", "fd=0", "!",
         f"rawvideoparse", "format=rgb", f"width={W}", f"height={H}", f"framerate={fps}/1", "!",
         "videoconvert", "!", f"video/x-raw,format={chroma}", "!", "x264enc", "speed-preset=veryfast", "tune=zerolatency", "bitrate=900", "key-int-max=30", "!",
         "h264parse", "!", "mp4mux", "!", "filesink", f"location={path}"],
        stdin=subprocess.PIPE)
    noise_rng = np.random.default_rng(rng.integers(1 << 30))
    # Sensor noise: a bank of frames, shifted at random, is as good as fresh noise here.
    bank = [noise_rng.normal(0, 0.012, (H, W, 3)).astype(np.float32) for _ in range(6)]
    frames = int(seconds * fps)
    for i in range(frames):
        t = i / fps
        img = base
        for d in defects:
            img = d.draw(img, t)
        dy, dx = nuisances.offset(t)
        if dy or dx:
            img = np.roll(img, (dy, dx), axis=(0, 1))
        img = nuisances.apply(img, t) * gain * tint
        noise = bank[i % len(bank)]
        img = img + np.roll(noise, int(noise_rng.integers(W)), axis=1)
        frame = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        encoder.stdin.write(frame.tobytes())
    encoder.stdin.close()
    if encoder.wait() != 0:
        raise SystemExit(f"encoding {path} failed")
    truth = []
    for d in defects:
        truth.append({"class": d.klass, "onset_s": round(d.onset, 2), "box": d.box(seconds - 0.01)})
    return style, truth, nuisances.events, nuisances.dirt is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=9001)
    parser.add_argument("--defect-clips", type=int, default=8)
    parser.add_argument("--clean-clips", type=int, default=24)
    parser.add_argument("--defect-seconds", type=float, default=120)
    parser.add_argument("--clean-seconds", type=float, default=300)
    parser.add_argument("--fps", type=int, default=10, help="frames per second of the clips with a defect")
    parser.add_argument("--clean-fps", type=int, default=5, help="frames per second of the clean clips")
    parser.add_argument("--clip", action="append", default=[],
                        help="CAMERA:SECONDS:FPS:CLASS:ONSET_S (CLASS none for a clean clip); replaces the default plan")
    parser.add_argument("--scene", type=int, default=None,
                        help="every clip shows one camera's view, drawn from this seed (its days, not other cameras)")
    parser.add_argument("--chroma", choices=["I420", "Y444"], default="I420",
                        help="what the encoder is given: 4:2:0 as cameras encode, or full-resolution colour "
                             "(how clips were rendered before; the draws are the same either way)")
    args = parser.parse_args()
    os.makedirs(os.path.join(args.out, "clips"), exist_ok=True)
    rng = np.random.default_rng(args.seed)
    classes = ["crack", "corrosion", "missing_component", "contamination"]
    clips = []
    plan = [(f"unseen-defect-{i:02d}", args.defect_seconds, args.fps, classes[i % len(classes)], None)
            for i in range(args.defect_clips)]
    plan += [(f"unseen-clean-{i:02d}", args.clean_seconds, args.clean_fps, None, None) for i in range(args.clean_clips)]
    if args.clip:
        plan = []
        for spec in args.clip:
            camera, seconds, fps, klass, onset = spec.split(":")
            plan.append((camera, float(seconds), int(fps), None if klass == "none" else klass, float(onset)))
    for camera, seconds, fps, klass, onset in plan:
        wanted = [klass] if klass else []
        path = os.path.join(args.out, "clips", camera + ".mp4")
        style, truth, events, dirt = render_clip(path, np.random.default_rng(rng.integers(1 << 30)), seconds, fps, wanted, onset,
                                                  args.scene, args.chroma)
        clips.append({"camera_id": camera, "file": f"clips/{camera}.mp4", "fps": fps, "seconds": seconds,
                      "width": W, "height": H, "style": style, "clean": not truth, "defects": truth,
                      "nuisances": events, "lens_dirt": dirt})
        print(f"{camera}: {style}, {len(truth)} defects, {len(events)} nuisances", flush=True)
    with open(os.path.join(args.out, "footage.json"), "w") as f:
        json.dump({"renderer": "benches/unseen/render.py", "seed": args.seed, "scene": args.scene, "chroma": args.chroma, "clips": clips}, f, indent=1)


if __name__ == "__main__":
    main()
