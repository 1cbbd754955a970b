// The page's player: an AudioWorklet that plays float samples posted by the page, through a small jitter buffer.
//
// Messages in (port):  {type: "audio", samples: Float32Array}   queue samples (transferred)
//                      {type: "end"}                            no more audio for this request: play out the rest
//                      {type: "flush"}                          drop everything queued (stop), go silent at once
//                      {type: "prebuffer", samples: n}          jitter buffer: samples queued before playback starts
// Messages out:        {type: "stats", buffered, played, underruns, playing, level}   about 20 times a second;
//                                                level: RMS in dBFS of what was output since the last stats
//                      {type: "drained", played}                            the last queued sample was played
//
// Playback starts once `prebuffer` samples are queued (or at "end"); if the queue runs dry before "end"
// it goes silent, counts an underrun and waits for `prebuffer` samples again.

class PcmPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.prebuffer = opts.prebuffer || 4800;
    this.queue = [];
    this.head = 0; // read position in queue[0]
    this.buffered = 0;
    this.played = 0;
    this.underruns = 0;
    this.playing = false;
    this.ended = false;
    this.blocks = 0;
    this.sumSquares = 0; // of the samples output since the last stats message
    this.counted = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === "audio") {
      if (this.ended && this.buffered === 0) { this.ended = false; }
      this.queue.push(msg.samples);
      this.buffered += msg.samples.length;
    } else if (msg.type === "end") {
      this.ended = true;
    } else if (msg.type === "flush") {
      this.queue = [];
      this.head = 0;
      this.buffered = 0;
      this.playing = false;
      this.ended = false;
    } else if (msg.type === "prebuffer") {
      this.prebuffer = Math.max(0, msg.samples | 0);
    } else if (msg.type === "reset") {
      this.queue = [];
      this.head = 0;
      this.buffered = 0;
      this.played = 0;
      this.underruns = 0;
      this.playing = false;
      this.ended = false;
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (!out) return true;
    if (!this.playing && this.buffered > 0 && (this.buffered >= this.prebuffer || this.ended)) {
      this.playing = true;
    }
    let i = 0;
    if (this.playing) {
      while (i < out.length && this.queue.length > 0) {
        const chunk = this.queue[0];
        const n = Math.min(out.length - i, chunk.length - this.head);
        out.set(chunk.subarray(this.head, this.head + n), i);
        i += n;
        this.head += n;
        if (this.head >= chunk.length) {
          this.queue.shift();
          this.head = 0;
        }
      }
      this.buffered -= i;
      this.played += i;
      if (this.buffered === 0) {
        this.playing = false;
        if (this.ended) {
          this.ended = false;
          this.port.postMessage({ type: "drained", played: this.played });
        } else {
          this.underruns += 1; // ran dry before the request ended: wait for `prebuffer` samples again
        }
      }
    }
    out.fill(0, i);
    for (let k = 0; k < i; k++) this.sumSquares += out[k] * out[k];
    this.counted += out.length;
    if (++this.blocks % 8 === 0) {
      const level = this.sumSquares > 0 ? 10 * Math.log10(this.sumSquares / this.counted) : -120;
      this.port.postMessage({ type: "stats", buffered: this.buffered, played: this.played,
                              underruns: this.underruns, playing: this.playing, level: Math.max(-120, level) });
      this.sumSquares = 0;
      this.counted = 0;
    }
    return true;
  }
}

registerProcessor("pcm-player", PcmPlayer);
