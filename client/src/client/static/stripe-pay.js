// Stripe's Payment Element takes the card in the browser (in Stripe's frame): the card number
// never reaches our servers, only the PaymentMethod id it creates, posted as the form's token.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("payment-form");
  if (!form || !form.dataset.stripeKey || typeof Stripe === "undefined") return;
  const stripe = Stripe(form.dataset.stripeKey);
  const elements = stripe.elements({
    mode: "payment",
    amount: Number(form.dataset.amount),
    currency: form.dataset.currency,
    paymentMethodCreation: "manual",
  });
  elements.create("payment").mount("#payment-element");
  const message = document.getElementById("payment-message");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    const submitted = await elements.submit();
    if (submitted.error) {
      message.textContent = submitted.error.message;
      return;
    }
    const { error, paymentMethod } = await stripe.createPaymentMethod({ elements });
    if (error) {
      message.textContent = error.message;
      return;
    }
    document.getElementById("payment-token").value = paymentMethod.id;
    form.submit();
  });
});
