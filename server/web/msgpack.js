// A small msgpack codec for protocol v1: exactly the types the protocol uses, every read bounds-checked.
//
//   encode(value) -> Uint8Array     nil, booleans, numbers (safe integers as ints, others as float64),
//                                   strings, Uint8Array (bin), arrays, plain objects (maps; undefined values left out)
//   decode(bytes) -> value          the same, plus float32, int64/uint64 (as Number) and map/array/str/bin 16/32;
//                                   bin decodes to a Uint8Array view of the input, maps to plain objects
//
// Written for this page from the msgpack specification; no third-party code.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

export class MsgpackError extends Error {}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }
  ensure(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buf.subarray(0, this.pos));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }
  u8(v) { this.ensure(1); this.view.setUint8(this.pos, v); this.pos += 1; }
  u16(v) { this.ensure(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.ensure(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  bytes(b) { this.ensure(b.length); this.buf.set(b, this.pos); this.pos += b.length; }
  result() { return this.buf.slice(0, this.pos); }
}

function encodeInt(w, v) {
  if (v >= 0) {
    if (v < 0x80) w.u8(v);
    else if (v <= 0xff) { w.u8(0xcc); w.u8(v); }
    else if (v <= 0xffff) { w.u8(0xcd); w.u16(v); }
    else if (v <= 0xffffffff) { w.u8(0xce); w.u32(v); }
    else { w.u8(0xcf); w.u32(Math.floor(v / 2 ** 32)); w.u32(v >>> 0); }
  } else {
    if (v >= -32) w.u8(v & 0xff);
    else if (v >= -0x80) { w.u8(0xd0); w.ensure(1); w.view.setInt8(w.pos, v); w.pos += 1; }
    else if (v >= -0x8000) { w.u8(0xd1); w.ensure(2); w.view.setInt16(w.pos, v); w.pos += 2; }
    else if (v >= -0x80000000) { w.u8(0xd2); w.ensure(4); w.view.setInt32(w.pos, v); w.pos += 4; }
    else { w.u8(0xd3); w.ensure(8); w.view.setBigInt64(w.pos, BigInt(v)); w.pos += 8; }
  }
}

function encodeLength(w, n, fix, fixMax, c8, c16, c32) {
  if (fix !== null && n <= fixMax) w.u8(fix | n);
  else if (c8 !== null && n <= 0xff) { w.u8(c8); w.u8(n); }
  else if (n <= 0xffff) { w.u8(c16); w.u16(n); }
  else { w.u8(c32); w.u32(n); }
}

function encodeValue(w, v, depth) {
  if (depth > 16) throw new MsgpackError("msgpack: nested too deeply");
  if (v === null || v === undefined) w.u8(0xc0);
  else if (v === true) w.u8(0xc3);
  else if (v === false) w.u8(0xc2);
  else if (typeof v === "number") {
    if (Number.isSafeInteger(v)) encodeInt(w, v);
    else { w.u8(0xcb); w.ensure(8); w.view.setFloat64(w.pos, v); w.pos += 8; }
  } else if (typeof v === "string") {
    const b = textEncoder.encode(v);
    encodeLength(w, b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
    w.bytes(b);
  } else if (v instanceof Uint8Array) {
    encodeLength(w, v.length, null, 0, 0xc4, 0xc5, 0xc6);
    w.bytes(v);
  } else if (Array.isArray(v)) {
    encodeLength(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
    for (const item of v) encodeValue(w, item, depth + 1);
  } else if (typeof v === "object") {
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    encodeLength(w, keys.length, 0x80, 15, null, 0xde, 0xdf);
    for (const k of keys) { encodeValue(w, k, depth + 1); encodeValue(w, v[k], depth + 1); }
  } else {
    throw new MsgpackError(`msgpack: cannot encode a ${typeof v}`);
  }
}

export function encode(value) {
  const w = new Writer();
  encodeValue(w, value, 0);
  return w.result();
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }
  need(n) {
    if (this.pos + n > this.bytes.length) throw new MsgpackError("msgpack: truncated");
  }
  u8() { this.need(1); return this.view.getUint8(this.pos++); }
  u16() { this.need(2); const v = this.view.getUint16(this.pos); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos); this.pos += 4; return v; }
  i8() { this.need(1); return this.view.getInt8(this.pos++); }
  i16() { this.need(2); const v = this.view.getInt16(this.pos); this.pos += 2; return v; }
  i32() { this.need(4); const v = this.view.getInt32(this.pos); this.pos += 4; return v; }
  u64() { this.need(8); const v = this.view.getBigUint64(this.pos); this.pos += 8; return Number(v); }
  i64() { this.need(8); const v = this.view.getBigInt64(this.pos); this.pos += 8; return Number(v); }
  f32() { this.need(4); const v = this.view.getFloat32(this.pos); this.pos += 4; return v; }
  f64() { this.need(8); const v = this.view.getFloat64(this.pos); this.pos += 8; return v; }
  take(n) { this.need(n); const b = this.bytes.subarray(this.pos, this.pos + n); this.pos += n; return b; }
  str(n) { return textDecoder.decode(this.take(n)); }
}

function decodeArray(r, n, depth) {
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = decodeValue(r, depth + 1);
  return out;
}

function decodeMap(r, n, depth) {
  const out = {};
  for (let i = 0; i < n; i++) {
    const key = decodeValue(r, depth + 1);
    if (typeof key !== "string") throw new MsgpackError("msgpack: a map key is not a string");
    // defineProperty: a key named __proto__ is data, never the object's prototype
    Object.defineProperty(out, key, { value: decodeValue(r, depth + 1), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function decodeValue(r, depth) {
  if (depth > 16) throw new MsgpackError("msgpack: nested too deeply");
  const c = r.u8();
  if (c <= 0x7f) return c;
  if (c >= 0xe0) return c - 0x100;
  if ((c & 0xf0) === 0x80) return decodeMap(r, c & 0x0f, depth);
  if ((c & 0xf0) === 0x90) return decodeArray(r, c & 0x0f, depth);
  if ((c & 0xe0) === 0xa0) return r.str(c & 0x1f);
  switch (c) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return r.take(r.u8());
    case 0xc5: return r.take(r.u16());
    case 0xc6: return r.take(r.u32());
    case 0xca: return r.f32();
    case 0xcb: return r.f64();
    case 0xcc: return r.u8();
    case 0xcd: return r.u16();
    case 0xce: return r.u32();
    case 0xcf: return r.u64();
    case 0xd0: return r.i8();
    case 0xd1: return r.i16();
    case 0xd2: return r.i32();
    case 0xd3: return r.i64();
    case 0xd9: return r.str(r.u8());
    case 0xda: return r.str(r.u16());
    case 0xdb: return r.str(r.u32());
    case 0xdc: return decodeArray(r, r.u16(), depth);
    case 0xdd: return decodeArray(r, r.u32(), depth);
    case 0xde: return decodeMap(r, r.u16(), depth);
    case 0xdf: return decodeMap(r, r.u32(), depth);
    default: throw new MsgpackError(`msgpack: type 0x${c.toString(16)} is not used by protocol v1`);
  }
}

export function decode(bytes) {
  const r = new Reader(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
  const value = decodeValue(r, 0);
  if (r.pos !== r.bytes.length) throw new MsgpackError("msgpack: trailing bytes after the message");
  return value;
}
