// Progressive enhancement only: every page works without this file.
"use strict";

// The time left to pay, counting down; at zero the page reloads to show the order expired.
function startCountdown(element) {
  const deadline = Date.now() + Number(element.dataset.secondsLeft) * 1000;
  const tick = () => {
    const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    element.textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    if (left === 0) {
      window.setTimeout(() => window.location.reload(), 1500);
      return;
    }
    window.setTimeout(tick, 1000);
  };
  tick();
}

// After paying, the order completes a moment later (an event): look again until it has.
function reloadWhileConfirming() {
  window.setTimeout(() => window.location.reload(), 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  const countdown = document.getElementById("countdown");
  if (countdown) startCountdown(countdown);
  if (document.getElementById("confirming")) reloadWhileConfirming();
});
