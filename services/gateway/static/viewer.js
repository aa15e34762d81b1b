// WebGL renderer of a GMPI multiplane image, numerically mirroring gmpi_core.mpi.render.render_mpi.
//
// Conventions (docs/method.md §1-§3, the "conventions" block of mpi.json):
//   * world = camera axes: +X right, +Y down, +Z forward; cameras orbit (0, 0, c) at radius r (§1.3);
//   * pinhole, square pixels, principal point at the image centre, rays through pixel centres (§1.2, §3.1);
//   * plane i is the rectangle z = depth_i, |x| <= w_i/2, |y| <= h_i/2; texel (j, k) of a T-texel side
//     sits at x = (-1 + 2k/(T-1)) w/2 (align_corners=True), row 0 at the top (-Y) (§2.3, §3.2);
//   * RGBA not premultiplied, RGB and alpha sampled bilinearly and independently, zero outside (§3.2);
//   * front-to-back w_i = a_i prod_{j<i}(1 - a_j), colour = sum w_i c_i, no background (§3.3) — which is
//     exactly back-to-front "over" of non-premultiplied sources onto black, what this file draws.
// No build step, no dependencies: GLSL ES 1.00 shaders run on WebGL1 and WebGL2 contexts alike.

/** Camera-to-world of the camera at (yaw, pitch) on the sphere (docs/method.md §1.3): {x, y, z, centre} (float64). */
export function sphereCameraToWorld(yaw, pitch, radius, centerZ) {
  const cosP = Math.abs(Math.cos(pitch));
  const centre = [
    radius * cosP * Math.sin(yaw),
    -radius * Math.sin(pitch),
    centerZ - radius * cosP * Math.cos(yaw),
  ];
  const z = normalize([-centre[0], -centre[1], centerZ - centre[2]]); // looks at S = (0, 0, c)
  const x = normalize(cross([0, 1, 0], z)); // zero roll: x_c = norm(ŷ × z_c)
  const y = normalize(cross(z, x));
  return { x, y, z, centre };
}

/** Column-major 4x4 world-to-camera matrix (rows x_c, y_c, z_c of c2w, translation -R·C), docs/method.md §1.5. */
export function worldToCamera({ x, y, z, centre }) {
  const t = [-dot(x, centre), -dot(y, centre), -dot(z, centre)];
  // column-major for uniformMatrix4fv: element (row r, column k) at index 4k + r
  // prettier-ignore
  return new Float32Array([
    x[0], y[0], z[0], 0,
    x[1], y[1], z[1], 0,
    x[2], y[2], z[2], 0,
    t[0], t[1], t[2], 1,
  ]);
}

/** Focal length in device pixels of a square view: render_mpi's f = W / (2 tan(fov/2)) (docs/method.md §1.2). */
export function focalPixels(fovDeg, size) {
  return size / (2 * Math.tan((fovDeg * Math.PI) / 360));
}

/**
 * Where the square view goes on a width × height canvas: the largest centred square ("letterbox"),
 * {left, top, size} in device pixels from the top-left corner. The MPI is square (render_mpi's images
 * are), so the view is never stretched to the canvas's aspect ratio, nor shown beyond its field of view:
 * the bars on either side stay black.
 */
export function squareViewport(width, height) {
  const size = Math.min(width, height);
  return { left: Math.floor((width - size) / 2), top: Math.floor((height - size) / 2), size };
}

function dot(a, b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

function cross(a, b) {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

function normalize(v) {
  const n = Math.hypot(v[0], v[1], v[2]);
  return [v[0] / n, v[1] / n, v[2] / n];
}

// -- textures -------------------------------------------------------------------------------------------

// createImageBitmap options that keep the exported bytes as they are: no premultiplication (RGB under
// zero alpha is read by bilinear sampling, docs/method.md §3.2) and no colour management (8-bit value / 255 is the
// renderer's value).
const RAW_BITMAP = { premultiplyAlpha: "none", colorSpaceConversion: "none" };

/**
 * Decode the plane images of a manifest: [{depth, width, height, bitmap}] in manifest order. An atlas
 * ("rect" entries) is decoded once and cut into one bitmap per plane, so each plane gets its own
 * CLAMP_TO_EDGE texture and never samples a neighbour in the sheet.
 */
export async function decodePlanes(manifest, urlOf, blobs) {
  const sheets = new Map();
  for (const [url, blob] of blobs) sheets.set(url, await createImageBitmap(blob, RAW_BITMAP));
  const planes = [];
  for (const entry of manifest.planes) {
    const sheet = sheets.get(urlOf(entry));
    const bitmap = entry.rect ? await createImageBitmap(sheet, ...entry.rect, RAW_BITMAP) : sheet;
    planes.push({ depth: entry.depth, width: entry.width, height: entry.height, bitmap });
  }
  if (manifest.planes.some((entry) => entry.rect)) for (const sheet of sheets.values()) sheet.close();
  return planes;
}

// -- shaders --------------------------------------------------------------------------------------------

// a_corner in {-1, 1}²: the plane rectangle grown by one texel spacing on each side, because
// zero-padded bilinear sampling (grid_sample, align_corners=True) fades the border texels to zero over
// that band instead of stopping at the plane edge. v_texel = continuous texel index, texel k at k.
const PLANE_VS = `
attribute vec2 a_corner;
uniform mat4 u_world_to_camera;
uniform vec2 u_focal_ndc;      // (2f/S, 2f/S) of the S × S view: camera-frame x/z, y/z -> NDC
uniform vec3 u_plane;          // (depth, width, height) in world units
uniform vec2 u_tex_size;       // (T_w, T_h) texels
varying vec2 v_texel;
void main() {
  vec2 grow = (u_tex_size + 1.0) / (u_tex_size - 1.0);
  vec2 xy = a_corner * grow * 0.5 * u_plane.yz;
  vec4 cam = u_world_to_camera * vec4(xy, u_plane.x, 1.0);
  v_texel = (xy / u_plane.yz + 0.5) * (u_tex_size - 1.0);
  // camera +Y is down, NDC +y is up; clip w = camera z gives the perspective divide. Depth is unused
  // (depth test off, order by sorting), so clip z = 0 keeps every plane in front of the camera unclipped.
  gl_Position = vec4(cam.x * u_focal_ndc.x, -cam.y * u_focal_ndc.y, 0.0, cam.z);
}`;

const PLANE_FS = `
precision highp float;
uniform sampler2D u_texture;
uniform vec2 u_tex_size;
varying vec2 v_texel;
void main() {
  // LINEAR + CLAMP_TO_EDGE at texel centres (k + 0.5)/T reproduces align_corners=True bilinear inside the
  // plane; in the outer band the edge texel is faded linearly to zero, which is what zero padding gives
  // (separable, so the product of the two axes' factors also handles the corners).
  vec2 outside = max(-v_texel, v_texel - (u_tex_size - 1.0));
  vec2 fade = clamp(1.0 - outside, 0.0, 1.0);
  vec4 rgba = texture2D(u_texture, (v_texel + 0.5) / u_tex_size) * (fade.x * fade.y);
  gl_FragColor = rgba; // not premultiplied: the blend function multiplies by alpha
}`;

// Copies the float accumulation buffer to the canvas (one quantisation to 8 bits instead of one per plane).
const BLIT_VS = `
attribute vec2 a_corner;
varying vec2 v_uv;
void main() {
  v_uv = a_corner * 0.5 + 0.5;
  gl_Position = vec4(a_corner, 0.0, 1.0);
}`;

const BLIT_FS = `
precision highp float;
uniform sampler2D u_texture;
varying vec2 v_uv;
void main() { gl_FragColor = vec4(texture2D(u_texture, v_uv).rgb, 1.0); }`;

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) {
    throw new Error(`shader compile failed: ${gl.getShaderInfoLog(shader)}`);
  }
  return shader;
}

function link(gl, vertexSource, fragmentSource) {
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, vertexSource));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, fragmentSource));
  gl.bindAttribLocation(program, 0, "a_corner");
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) {
    throw new Error(`shader link failed: ${gl.getProgramInfoLog(program)}`);
  }
  const uniforms = {};
  const count = gl.getProgramParameter(program, gl.ACTIVE_UNIFORMS);
  for (let i = 0; i < count; i++) {
    const name = gl.getActiveUniform(program, i).name;
    uniforms[name] = gl.getUniformLocation(program, name);
  }
  return { program, uniforms };
}

/** The WebGL context, WebGL2 preferred (float accumulation), or null when WebGL is unavailable. */
function createContext(canvas) {
  // alpha: false — the composite is opaque (the background plane has alpha 1; uncovered pixels are black
  // as in render_mpi), so the page behind must not show through.
  const attributes = {
    alpha: false,
    antialias: false,
    depth: false,
    stencil: false,
    preserveDrawingBuffer: false,
  };
  const gl2 = canvas.getContext("webgl2", attributes);
  if (gl2) return { gl: gl2, webgl2: true };
  const gl1 = canvas.getContext("webgl", attributes) || canvas.getContext("experimental-webgl", attributes);
  return gl1 ? { gl: gl1, webgl2: false } : null;
}

// -- renderer -------------------------------------------------------------------------------------------

export class MpiRenderer {
  /** Returns null when the canvas cannot give a WebGL context (the caller falls back to server renders). */
  static create(canvas) {
    const context = createContext(canvas);
    return context ? new MpiRenderer(canvas, context) : null;
  }

  constructor(canvas, { gl, webgl2 }) {
    this.canvas = canvas;
    this.gl = gl;
    this.webgl2 = webgl2;
    this.planes = []; // [{depth, width, height, texture, texSize}] sorted far to near
    this.camera = null; // mpi.json "camera"
    this.pose = { yaw: 0, pitch: 0 };
    this.accum = null; // {framebuffer, texture, width, height} when float blending is available
    this.useFloatAccumulation = webgl2 && Boolean(gl.getExtension("EXT_color_buffer_float"));
    this.setUpPipeline();
  }

  setUpPipeline() {
    const gl = this.gl;
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false); // texture row 0 = image row 0 = top (-Y)
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    this.planeProgram = link(gl, PLANE_VS, PLANE_FS);
    this.blitProgram = link(gl, BLIT_VS, BLIT_FS);
    this.quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    gl.disable(gl.DEPTH_TEST); // planes are ordered by sorting, not by a depth buffer
    gl.disable(gl.CULL_FACE); // the quad's winding flips with the y-down camera; both faces are wanted
  }

  /** Upload the decoded planes (see decodePlanes) with the manifest's camera; replaces any previous MPI. */
  setMpi(manifest, planes) {
    this.releaseTextures();
    this.camera = manifest.camera;
    // Back to front: every camera on the sphere has z < all plane depths and rays with positive world z,
    // so a ray meets the planes in increasing depth; drawing decreasing depth is "over" in the right order.
    this.planes = planes
      .map(({ depth, width, height, bitmap }) => {
        const plane = {
          depth,
          width,
          height,
          texture: this.upload(bitmap),
          texSize: [bitmap.width, bitmap.height],
        };
        bitmap.close(); // the texture holds the pixels now
        return plane;
      })
      .sort((a, b) => b.depth - a.depth);
  }

  upload(bitmap) {
    const gl = this.gl;
    const texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, texture);
    // ImageBitmaps ignore the UNPACK_* settings: RAW_BITMAP already made them unpremultiplied and unflipped
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
    // CLAMP_TO_EDGE: the shader handles the outside (zero padding); also required for NPOT on WebGL1.
    // LINEAR, no mipmaps: grid_sample is plain bilinear at every scale.
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    return texture;
  }

  releaseTextures() {
    for (const plane of this.planes) this.gl.deleteTexture(plane.texture);
    this.planes = [];
  }

  setPose(yaw, pitch) {
    this.pose = { yaw, pitch };
  }

  /** Match the drawing buffer to the canvas's size in device pixels (CSS size × devicePixelRatio). */
  resize(deviceWidth, deviceHeight) {
    const width = Math.max(1, Math.round(deviceWidth));
    const height = Math.max(1, Math.round(deviceHeight));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
  }

  /** The canvas's square view: {left, top, size} (see squareViewport). */
  get view() {
    return squareViewport(this.canvas.width, this.canvas.height);
  }

  /** Draw the MPI at the current pose into the centred square of the canvas; the rest is black. */
  render() {
    const gl = this.gl;
    const { width, height } = this.canvas;
    const view = this.view;
    const target = this.useFloatAccumulation ? this.accumulationTarget(view.size, view.size) : null;
    gl.clearColor(0, 0, 0, 1); // no implicit background (docs/method.md §3.3): uncovered pixels stay black
    if (target) {
      gl.bindFramebuffer(gl.FRAMEBUFFER, target.framebuffer);
      gl.viewport(0, 0, view.size, view.size);
      gl.clear(gl.COLOR_BUFFER_BIT);
      this.drawPlanes(view.size);
    }
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.viewport(0, 0, width, height);
    gl.clear(gl.COLOR_BUFFER_BIT); // the whole canvas: clear ignores the viewport
    // GL's window origin is the bottom-left corner
    gl.viewport(view.left, height - view.top - view.size, view.size, view.size);
    if (target) this.blit(target);
    else this.drawPlanes(view.size);
  }

  drawPlanes(size) {
    if (!this.camera || !this.planes.length) return;
    const gl = this.gl;
    const { program, uniforms } = this.planeProgram;
    const cam = this.camera;
    const c2w = sphereCameraToWorld(this.pose.yaw, this.pose.pitch, cam.sphere_radius, cam.sphere_center_z);
    const focalNdc = (2 * focalPixels(cam.fov_deg, size)) / size;
    gl.useProgram(program);
    gl.uniformMatrix4fv(uniforms.u_world_to_camera, false, worldToCamera(c2w));
    gl.uniform2f(uniforms.u_focal_ndc, focalNdc, focalNdc);
    gl.uniform1i(uniforms.u_texture, 0);
    this.bindQuad();
    // "over" with a non-premultiplied source: C = a·c + (1 − a)·C (docs/method.md §3.3 unrolled back to front);
    // destination alpha accumulates coverage the same way.
    gl.enable(gl.BLEND);
    gl.blendEquation(gl.FUNC_ADD);
    gl.blendFuncSeparate(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA, gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.activeTexture(gl.TEXTURE0);
    for (const plane of this.planes) {
      gl.bindTexture(gl.TEXTURE_2D, plane.texture);
      gl.uniform3f(uniforms.u_plane, plane.depth, plane.width, plane.height);
      gl.uniform2f(uniforms.u_tex_size, plane.texSize[0], plane.texSize[1]);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    }
    gl.disable(gl.BLEND);
  }

  bindQuad() {
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.quad);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
  }

  /**
   * A half-float render target the size of the square view. Blending N planes in an 8-bit framebuffer rounds
   * after every plane; accumulating in float and quantising once keeps the result within one 8-bit step
   * of render_mpi's float32 composite.
   */
  accumulationTarget(width, height) {
    const gl = this.gl;
    if (this.accum && this.accum.width === width && this.accum.height === height) return this.accum;
    this.releaseAccumulation();
    const texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA16F, width, height, 0, gl.RGBA, gl.HALF_FLOAT, null);
    for (const [key, value] of [
      [gl.TEXTURE_MIN_FILTER, gl.NEAREST],
      [gl.TEXTURE_MAG_FILTER, gl.NEAREST],
      [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE],
      [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE],
    ])
      gl.texParameteri(gl.TEXTURE_2D, key, value);
    const framebuffer = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) {
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.deleteFramebuffer(framebuffer);
      gl.deleteTexture(texture);
      this.useFloatAccumulation = false; // blend straight into the 8-bit canvas from now on
      return null;
    }
    this.accum = { framebuffer, texture, width, height };
    return this.accum;
  }

  releaseAccumulation() {
    if (!this.accum) return;
    this.gl.deleteFramebuffer(this.accum.framebuffer);
    this.gl.deleteTexture(this.accum.texture);
    this.accum = null;
  }

  /** Copy the accumulation target 1:1 into the current viewport (the canvas's square view). */
  blit(target) {
    const gl = this.gl;
    gl.useProgram(this.blitProgram.program);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, target.texture);
    gl.uniform1i(this.blitProgram.uniforms.u_texture, 0);
    this.bindQuad();
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  /**
   * Render and read the canvas back: {width, height, data} with data RGBA rows from the TOP (image order).
   * Rendering and reading in the same task is what makes this work without preserveDrawingBuffer.
   */
  readPixels() {
    this.render();
    const gl = this.gl;
    const { width, height } = this.canvas;
    const bottomUp = new Uint8Array(width * height * 4);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, bottomUp);
    const data = new Uint8Array(bottomUp.length);
    const row = width * 4;
    for (let y = 0; y < height; y++)
      data.set(bottomUp.subarray((height - 1 - y) * row, (height - y) * row), y * row);
    return { width, height, data };
  }

  dispose() {
    this.releaseTextures();
    this.releaseAccumulation();
  }
}
