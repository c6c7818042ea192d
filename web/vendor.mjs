// Copy the dashboard's libraries from node_modules (installed by `npm ci` from
// package-lock.json) into the Python package, api/static/vendor/, with their licences.
// Only the built dist files the page loads are copied; the trailing sourceMappingURL
// comment is dropped so no browser ever asks for a .map file the package does not carry.
// A manifest.json records each library's name, version and licence (a unit test checks it
// against package-lock.json). Run by `make vendor`; usage: node vendor.mjs [target dir].
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = resolve(process.argv[2] ?? join(here, "..", "api", "static", "vendor"));

// library -> the dist files the dashboard loads (relative to the package root)
const LIBRARIES = {
  leaflet: ["dist/leaflet.js", "dist/leaflet.css", "LICENSE"],
  uplot: ["dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE"],
};

function copyStripped(source, destination) {
  if (source.endsWith(".js") || source.endsWith(".css")) {
    const text = readFileSync(source, "utf8").replace(/\n?\/[/*][#@] sourceMappingURL=\S+( \*\/)?\s*$/, "\n");
    writeFileSync(destination, text);
  } else {
    copyFileSync(source, destination);
  }
}

rmSync(target, { recursive: true, force: true });
const manifest = {};
for (const [name, files] of Object.entries(LIBRARIES)) {
  const root = join(here, "node_modules", name);
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  const out = join(target, name);
  mkdirSync(out, { recursive: true });
  for (const file of files) {
    copyStripped(join(root, file), join(out, file.split("/").pop()));
  }
  if (name === "leaflet") {
    // leaflet.css names these images (layer control, default marker); small, and local.
    mkdirSync(join(out, "images"), { recursive: true });
    for (const image of readdirSync(join(root, "dist", "images"))) {
      copyFileSync(join(root, "dist", "images", image), join(out, "images", image));
    }
  }
  manifest[name] = { version: pkg.version, license: pkg.license, files: files.map((f) => f.split("/").pop()) };
}
writeFileSync(join(target, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`vendored ${Object.keys(manifest).map((n) => `${n} ${manifest[n].version}`).join(", ")} into ${target}`);
