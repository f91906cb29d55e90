// wastecls serve: drop photos, POST them to /predict, show the answers (as text only).
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const token = $("token").value.trim();
  return token ? {Authorization: `Bearer ${token}`} : {};
}

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value;
  row.append(td);
  return td;
}

async function classify(files) {
  if (!files.length) {
    return;
  }
  const form = new FormData();
  for (const file of files) {
    form.append("file", file, file.name);
  }
  $("status").textContent = `classifying ${files.length} photo(s)...`;
  try {
    const response = await fetch("/predict", {method: "POST", body: form, headers: headers()});
    const data = await response.json();
    if (!response.ok) {
      throw new Error(data.error || JSON.stringify(data.detail) || response.statusText);
    }
    data.forEach((answer, k) => {
      const row = document.createElement("tr");
      const picture = document.createElement("img");
      picture.src = URL.createObjectURL(files[k]);
      picture.alt = "";
      cell(row, "").append(picture);
      cell(row, answer.path);
      cell(row, answer.label);
      cell(row, `${(100 * answer.confidence).toFixed(1)}%`);
      cell(row, answer.flag || "");
      cell(row, answer.labels.map((l, i) => `${l} ${(100 * answer.probs[i]).toFixed(1)}%`)
        .join(", "));
      $("results").prepend(row);
    });
    $("status").textContent = "";
  } catch (error) {
    $("status").textContent = String(error.message || error);
  }
}

window.addEventListener("DOMContentLoaded", async () => {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify([...event.dataTransfer.files]);
  });
  $("files").addEventListener("change", (event) => classify([...event.target.files]));
  const health = await fetch("/health").then((r) => r.json()).catch(() => ({}));
  $("model").textContent = health.model ? `Model: ${health.model}` : "";
});
