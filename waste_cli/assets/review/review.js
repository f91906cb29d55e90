// wastecls review: one item at a time; each decision is committed on the server before the
// next item shows. Text from the data is only ever set as textContent.
"use strict";

let state = null;
let current = null;
let chain = Promise.resolve();  // keys are handled one after another, in the order pressed
const decidedHere = [];  // keys this tab decided, for U (undo)

const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(data.error || JSON.stringify(data.detail) || response.statusText);
  }
  return data;
}

function text(element, value) {
  element.textContent = value;
  return element;
}

function showCounts(data) {
  text($("count"), `${data.decided} of ${data.total} decided`);
  $("progress").style.width = `${data.total ? (100 * data.decided / data.total) : 100}%`;
}

function showClasses() {
  const list = $("classes");
  list.replaceChildren();
  state.classes.forEach((name, k) => {
    const entry = document.createElement("li");
    if (k < 9) {
      entry.append(text(document.createElement("kbd"), String(k + 1)), " ");
    }
    entry.append(document.createTextNode(name));
    entry.dataset.label = name;
    entry.addEventListener("click", () => decide("label", name));
    list.append(entry);
  });
}

function show(item) {
  current = item;
  $("done").hidden = true;
  document.querySelector("main").hidden = false;
  $("photo").src = `/image/${item.index}`;
  text($("name"), item.name);
  text($("given"), item.label || "(none)");
  text($("note"), item.note || "");
  const guesses = $("guesses");
  guesses.replaceChildren();
  for (const [name, probability] of item.guesses) {
    const entry = text(document.createElement("li"),
                       `${name} ${(100 * probability).toFixed(1)}%`);
    entry.addEventListener("click", () => decide("label", name));
    guesses.append(entry);
  }
  showCounts(item);
}

function finished(data) {
  current = null;
  showCounts(data);
  document.querySelector("main").hidden = true;
  $("done").hidden = false;
}

async function showNext() {
  const data = await api("/api/next");
  if (data.done) {
    finished(data);
  } else {
    show(data);
  }
}

function enqueue(work) {
  chain = chain.then(async () => {
    text($("status"), "");
    try {
      await work();
    } catch (error) {
      text($("status"), String(error.message || error));
    }
  });
  return chain;
}

function decide(action, label = "") {
  // A decision is on the item shown when the key was pressed: a key pressed twice quickly
  // does not decide the next item unseen.
  const shown = current && current.key;
  return enqueue(async () => {
    if (!current || current.key !== shown) {
      return;
    }
    await api("/api/decide", {key: current.key, action, label});
    decidedHere.push(current.key);
    await showNext();
  });
}

function undo() {
  return enqueue(async () => {
    const key = decidedHere.pop();
    if (key === undefined) {
      text($("status"), "nothing of this tab's to undo");
      return;
    }
    show(await api("/api/undo", {key}));
  });
}

function acceptTop() {
  if (current && current.guesses.length) {
    return decide("label", current.guesses[0][0]);
  }
  return enqueue(async () => {
    text($("status"), "no guess to accept: pick a class (1-9 or click)");
  });
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) {
    return;
  }
  const key = event.key;
  if (/^[1-9]$/.test(key)) {
    const name = state && state.classes[Number(key) - 1];
    if (name !== undefined) {
      decide("label", name);
    }
  } else if (key === "Enter") {
    acceptTop();
  } else if (key === "s" || key === "S") {
    decide("skip");
  } else if (key === "d" || key === "D") {
    decide("drop");
  } else if (key === "u" || key === "U") {
    undo();
  } else {
    return;
  }
  event.preventDefault();
});

window.addEventListener("DOMContentLoaded", () => {
  $("accept").addEventListener("click", acceptTop);
  $("skip").addEventListener("click", () => decide("skip"));
  $("drop").addEventListener("click", () => decide("drop"));
  $("undo").addEventListener("click", undo);
  enqueue(async () => {
    state = await api("/api/state");
    text($("source"), `${state.source} (${state.kind})`);
    showClasses();
    await showNext();
  });
});
