// The rating page: two images of one latent; a click posts the choice to POST /api/rate and loads the next pair.
// document.body.dataset.busy is "1" while a pair is loading or an answer is being recorded, "0" when a pair waits.
"use strict";

(function () {
  const left = document.getElementById("left");
  const right = document.getElementById("right");
  const count = document.getElementById("count");
  const status = document.getElementById("status");
  let pair = null;
  let answers = 0;
  let busy = false;

  function setBusy(on) {
    busy = on;
    document.body.dataset.busy = on ? "1" : "0";
  }

  function fail(message) {
    status.textContent = `error: ${message}`;
    status.classList.add("error");
  }

  const call = gandissectApi;  // api.js

  async function show(img, src) {
    img.src = src;
    if (img.decode) await img.decode().catch(() => undefined);
  }

  async function next() {
    setBusy(true);
    pair = null;
    try {
      const data = await call("/api/rate/pair");
      await Promise.all([show(left, data.left), show(right, data.right)]);
      pair = data.pair;
      status.classList.remove("error");
      status.textContent = answers ? "Thanks! Next pair." : "Click the more realistic image.";
    } catch (err) {
      fail(err.message);
    }
    setBusy(false);
  }

  async function choose(choice) {
    if (busy || pair === null) return;
    setBusy(true);
    try {
      await call("/api/rate", { pair, choice });
      answers += 1;
      count.textContent = String(answers);
    } catch (err) {
      fail(err.message);
      setBusy(false);
      return;
    }
    await next();
  }

  left.addEventListener("click", () => choose("left"));
  right.addEventListener("click", () => choose("right"));
  document.addEventListener("keydown", (event) => {
    if (event.key === "ArrowLeft") choose("left");
    else if (event.key === "ArrowRight") choose("right");
    else if (event.key === "Enter" && (event.target === left || event.target === right)) {
      choose(event.target === left ? "left" : "right");
    }
  });

  next();
})();
