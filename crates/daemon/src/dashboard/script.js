(function(){
var g=document.getElementById('generated');
if(g&&g.dataset.unix){var t=+g.dataset.unix,a=g.querySelector('.age');
function tick(){var s=Math.max(0,Math.round(Date.now()/1000-t));
a.textContent='('+(s<120?s+' s':Math.round(s/60)+' min')+' ago)';
if(s>600){g.classList.add('stale');a.textContent+=': the daemon has not refreshed its status; is it stuck?';}}
tick();setInterval(tick,1000);}
if(location.search){document.querySelectorAll('a.keep-query').forEach(function(l){l.href+=location.search;});}
})();
